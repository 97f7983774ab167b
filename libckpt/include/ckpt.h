/* ckpt: transparent checkpoint and restart of a running process.
 *
 * Generated from libckpt/src/ffi.rs by cbindgen; do not edit.
 * Regenerate with: CKPT_BLESS=1 cargo test -p ckpt --test header
 *
 * Configuration comes from the environment (CKPT_DIR, CKPT_INTERVAL, CKPT_POLICY, CKPT_KEEP,
 * CKPT_RESTORE, CKPT_LOG); see the README. Typical use, first thing in main():
 *
 *     if (ckpt_restore() != CKPT_OK || ckpt_init() != CKPT_OK) {
 *         fprintf(stderr, "ckpt: %s\n", ckpt_last_error());
 *         return 75;
 *     }
 */

#ifndef CKPT_H
#define CKPT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/*
 Success.
 */
#define CKPT_OK 0

/*
 A `CKPT_*` environment variable is invalid.
 */
#define CKPT_ECONFIG 1

/*
 A file or system operation failed.
 */
#define CKPT_EIO 2

/*
 The checkpoint was refused: the process holds something that cannot be restored.
 */
#define CKPT_EREFUSED 3

/*
 The checkpoint failed; the previous one is intact.
 */
#define CKPT_ECHECKPOINT 4

/*
 An image is damaged.
 */
#define CKPT_ECORRUPT 5

/*
 Every checkpoint in the store is damaged.
 */
#define CKPT_EALLCORRUPT 6

/*
 The checkpoint was taken by a different program or build.
 */
#define CKPT_EWRONGBINARY 7

/*
 This process cannot be laid out as the checkpointed one was.
 */
#define CKPT_ELAYOUT 8

/*
 `CKPT_RESTORE=require` and there is no checkpoint.
 */
#define CKPT_ENOCHECKPOINT 9

/*
 Another process uses the store.
 */
#define CKPT_ESTOREBUSY 10

/*
 A checkpoint is already in progress.
 */
#define CKPT_EBUSY 11

/*
 `ckpt_init` has not been called.
 */
#define CKPT_ENOTINIT 12

/*
 `ckpt_init` was already called.
 */
#define CKPT_EALREADY 13

/*
 Address-space randomisation could not be turned off.
 */
#define CKPT_EASLR 14

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/*
 Restores the last committed checkpoint of this program if the `CKPT_*` environment says so.
 Returns `CKPT_OK` when there is nothing to restore; on success it does not return.
 */
int ckpt_restore(void);

/*
 Starts checkpointing as the `CKPT_*` environment says (a no-op when `CKPT_DIR` is unset).
 */
int ckpt_init(void);

/*
 Takes a checkpoint now; returns once it is committed (and again after a restore from it).
 A no-op when `ckpt_init` found checkpointing off; `CKPT_ENOTINIT` before `ckpt_init`.
 */
int ckpt_checkpoint_now(void);

/*
 Leaves the whole pages of `[start, start + len)` out of every checkpoint; they read as
 zeros after a restore.
 */
int ckpt_exclude(const void *start, size_t len);

/*
 Stops checkpointing; committed checkpoints stay in the store.
 */
int ckpt_shutdown(void);

/*
 A static description of an error code.
 */
const char *ckpt_strerror(int code);

/*
 The full message of the last failing call (valid until the next failing call), or an empty
 string.
 */
const char *ckpt_last_error(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* CKPT_H */
