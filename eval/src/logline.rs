//! The library's log lines (`CKPT_LOG=info`, the contract in `docs/policies.md`), as
//! `benches/policies.rs` reads them: `checkpoint G committed (KIND, POLICY): ... N MiB ...
//! N ms ..., paused X ms`, `writing in the background (writer pid P, paused X ms)`, `failed`,
//! `skipped`, and the `checkpointing into ...` line of `init`.

/// What one `ckpt[pid]: ...` line says.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Committed(Commit),
    Background { paused_ms: Option<f64> },
    Failed(String),
    Skipped(String),
    Init(String),
    Other(String),
}

/// One committed checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub generation: u64,
    pub kind: Option<String>,
    pub policy: Option<String>,
    /// Page data in the image.
    pub data_mib: Option<f64>,
    /// Latency: from the start of the checkpoint to its commit.
    pub ms: Option<f64>,
    pub paused_ms: Option<f64>,
    /// Where a remote store put it: the tail of the line after `; ` (`in remote memory`,
    /// `in remote memory, degraded ...`, `on local disk (remote memory short)`).
    pub placement: Option<String>,
}

impl Commit {
    /// Whether a remote store wrote it somewhere else than whole into remote memory.
    pub fn off_remote(&self) -> bool {
        self.placement
            .as_deref()
            .is_some_and(|p| p != "in remote memory")
    }

    pub fn incremental(&self) -> bool {
        self.kind.as_deref() == Some("incremental")
    }
}

pub fn parse(line: &str) -> Event {
    let other = || Event::Other(line.to_string());
    let Some(rest) = line.strip_prefix("ckpt[") else {
        return other();
    };
    let Some((_pid, msg)) = rest.split_once("]: ") else {
        return other();
    };
    if msg.starts_with("checkpointing into ") {
        return Event::Init(msg.to_string());
    }
    if msg.starts_with("checkpoint skipped") {
        return Event::Skipped(msg.to_string());
    }
    let Some(after) = msg.strip_prefix("checkpoint ") else {
        return other();
    };
    let (g, tail) = after.split_once(' ').unwrap_or((after, ""));
    let Ok(generation) = g.parse::<u64>() else {
        return other();
    };
    if tail.starts_with("writing in the background") {
        return Event::Background {
            paused_ms: number_before(tail, "paused", "ms"),
        };
    }
    if tail.starts_with("failed") {
        return Event::Failed(msg.to_string());
    }
    let Some(tail) = tail.strip_prefix("committed") else {
        return other();
    };
    let (head, body) = tail.split_once(':').unwrap_or(("", tail));
    let inner = head.trim().trim_start_matches('(').trim_end_matches(')');
    let mut kp = inner.split(',').map(|s| s.trim().to_string());
    let kind = kp.next().filter(|s| !s.is_empty());
    let policy = kp.next().filter(|s| !s.is_empty());
    let words = words(body);
    let (mut ms, mut data_mib) = (None, None);
    for i in 1..words.len() {
        let v = words[i - 1].parse::<f64>().ok();
        // The latency is the first "<x> ms" not preceded by "paused".
        if words[i] == "ms" && ms.is_none() && (i < 2 || words[i - 2] != "paused") {
            ms = v;
        }
        if words[i] == "MiB" && data_mib.is_none() {
            data_mib = v;
        }
    }
    Event::Committed(Commit {
        generation,
        kind,
        policy,
        data_mib,
        ms,
        paused_ms: number_before(body, "paused", "ms"),
        placement: body
            .rsplit_once("; ")
            .map(|(_, p)| p.trim().to_string())
            .filter(|p| p.starts_with("in remote memory") || p.starts_with("on local disk")),
    })
}

fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '(' | ')' | ';'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The number between `word` and `unit` in `text` ("paused 3.2 ms" -> 3.2).
fn number_before(text: &str, word: &str, unit: &str) -> Option<f64> {
    words(text)
        .windows(3)
        .find(|w| w[0] == word && w[2] == unit)
        .and_then(|w| w[1].parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_examples() {
        let e = parse(
            "ckpt[12]: checkpoint 3 committed (incremental, forked-incremental): 51.2 MiB in 800 runs, 40.1 ms (1277 MiB/s), paused 2.5 ms",
        );
        assert_eq!(
            e,
            Event::Committed(Commit {
                generation: 3,
                kind: Some("incremental".into()),
                policy: Some("forked-incremental".into()),
                data_mib: Some(51.2),
                ms: Some(40.1),
                paused_ms: Some(2.5),
                placement: None,
            })
        );
        let Event::Committed(c) = parse(
            "ckpt[7]: checkpoint 2 committed (full, forked): 3.1 MiB in 2 runs, 380.2 ms, paused 0.9 ms; on local disk (remote memory short)",
        ) else {
            panic!("not a commit")
        };
        assert!(c.off_remote());
        assert_eq!(c.ms, Some(380.2));
        assert_eq!(
            parse(
                "ckpt[12]: checkpoint 4 writing in the background (writer pid 99, paused 3.5 ms)"
            ),
            Event::Background {
                paused_ms: Some(3.5)
            }
        );
        assert!(matches!(
            parse("ckpt[1]: checkpointing into /x every 1s"),
            Event::Init(_)
        ));
        assert!(matches!(parse("digest 0123"), Event::Other(_)));
    }
}
