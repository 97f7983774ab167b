//! Failures at exact places inside the server, through its named fault points (`RMEM_FAULT`).
//! Needs `cargo test -p rmem-server --features fault-points`; without the feature the tests say
//! so and pass.

mod common;

#[cfg(not(feature = "fault-points"))]
#[test]
fn fault_point_tests_need_the_feature() {
    eprintln!(
        "SKIPPED faultpoints: run `cargo test -p rmem-server --features fault-points` to compile the fault points in"
    );
}

#[cfg(feature = "fault-points")]
mod with_points {
    use std::time::Duration;

    use super::common::*;
    use rmem_client::{Pool, PoolError};

    fn faulty(fault: &str) -> Server {
        Server::start_env("32M", &[("RMEM_FAULT", fault)])
    }

    #[test]
    fn server_dies_at_its_fifth_put_parity_recovers() {
        let srv = vec![
            Server::start("32M"),
            faulty("crash-at-put:5"),
            Server::start("32M"),
        ];
        let mut pool = connect(&srv, "parity", true);
        let runs = page_runs(80, 40);
        let info = write_gen(&mut pool, 1, &runs, b"x").expect("parity absorbs the crash");
        assert!(info.degraded, "{info:?}");
        check_gen(&mut pool, 1, &runs, b"x").unwrap();
    }

    #[test]
    fn server_dies_between_storing_and_acknowledging_a_commit() {
        // Mirror: the other server's commit suffices; the generation is committed.
        let srv = vec![faulty("crash-at-commit:1"), Server::start("32M")];
        let mut pool = connect(&srv, "mirror:2", true);
        let runs = page_runs(81, 20);
        write_gen(&mut pool, 1, &runs, b"c").expect("committed on the surviving server");
        let mut again = connect(&srv, "mirror:2", true);
        assert_eq!(again.latest_committed().map(|i| i.generation), Some(1));
        check_gen(&mut again, 1, &runs, b"c").unwrap();
        // Alone, the crash means no commit was acknowledged: a clear error, nothing committed.
        let srv = vec![faulty("crash-at-commit:1")];
        let mut pool = connect(&srv, "none", true);
        match write_gen(&mut pool, 1, &runs, b"c") {
            Err(PoolError::CommitFailed { .. }) => {}
            other => panic!("expected a failed commit, got {other:?}"),
        }
    }

    #[test]
    fn corrupted_data_reply_is_caught_and_served_from_the_mirror() {
        let srv = vec![faulty("corrupt-get:3"), Server::start("32M")];
        let mut pool = connect(&srv, "mirror:2", true);
        let runs = page_runs(82, 30);
        write_gen(&mut pool, 1, &runs, b"g").unwrap();
        check_gen(&mut pool, 1, &runs, b"g").unwrap();
        assert!(srv[0].log_text().contains("fault point fires"));
    }

    #[test]
    fn hung_server_times_out_and_reads_continue_elsewhere() {
        let srv = vec![faulty("stall-get:2"), Server::start("32M")];
        let mut cfg = config(&srv, "mirror:2", true);
        cfg.io_timeout = Duration::from_secs(1);
        let mut pool = Pool::connect(cfg).unwrap();
        let runs = page_runs(83, 30);
        write_gen(&mut pool, 1, &runs, b"h").unwrap();
        check_gen(&mut pool, 1, &runs, b"h").unwrap();
        assert!(pool.health()[0].last_error.is_some());
    }
}
