//! x86_64 register context: the save/resume trampoline and stack switching.
//!
//! # Safety
//!
//! `save_and_call` is the `setjmp` of the checkpointer with the capture nested inside it: it
//! stores the callee-saved registers, the stack pointer, the return address, MXCSR and the x87
//! control word, then calls the capture function on a separate stack. Because the capture runs
//! *inside* the trampoline's call, the caller's frame is live and untouched while memory is
//! written out, and because it runs on its own stack, nothing at or below the saved stack
//! pointer changes either: the program's stack is frozen for the whole capture, whichever
//! stack (main, alternate signal stack, a coroutine's) the program was on. `resume` reloads a saved context on a process whose memory has been restored to
//! the image and returns `value` from that same `save_and_call` — a second return of one call,
//! which Rust sees as an ordinary return because every register the ABI says survives a call
//! is restored. `run_on_stack` switches to a fresh stack that no saved region overlaps.
#![allow(unsafe_code)]

use core::ffi::c_void;

/// The registers a call preserves, plus where to return, as saved by [`save_and_call`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Context {
    /// rbx, rbp, r12, r13, r14, r15.
    pub callee_saved: [u64; 6],
    /// Stack pointer of the caller just after `save_and_call` returns.
    pub rsp: u64,
    /// Return address into the caller.
    pub rip: u64,
    /// SSE control and status.
    pub mxcsr: u32,
    /// x87 control word.
    pub fpucw: u16,
    /// Padding, zero.
    pub pad: u16,
}

/// The capture callback: receives the filled context and the caller's argument; its return value
/// (which must be 0) is returned by `save_and_call` on the first return.
pub type CaptureFn = unsafe extern "C" fn(ctx: *mut Context, arg: *mut c_void) -> usize;

/// Saves the caller's context into `*ctx`, calls `f(ctx, arg)` on the stack whose top is
/// `stack_top`, and returns what it returns. After a restore, returns a second time with the
/// non-zero value given to [`resume`].
///
/// # Safety
/// `ctx` must be valid for writes; `f` must be safe to call with `(ctx, arg)`; `stack_top` must
/// be the 16-byte-aligned top of a mapped, writable stack large enough for `f`.
#[unsafe(naked)]
pub unsafe extern "C" fn save_and_call(
    ctx: *mut Context,
    f: CaptureFn,
    arg: *mut c_void,
    stack_top: usize,
) -> usize {
    core::arch::naked_asm!(
        "mov [rdi + 0], rbx",
        "mov [rdi + 8], rbp",
        "mov [rdi + 16], r12",
        "mov [rdi + 24], r13",
        "mov [rdi + 32], r14",
        "mov [rdi + 40], r15",
        // The caller's stack pointer once we have returned: past our return address.
        "lea rax, [rsp + 8]",
        "mov [rdi + 48], rax",
        "mov rax, [rsp]",
        "mov [rdi + 56], rax",
        "stmxcsr [rdi + 64]",
        "fnstcw [rdi + 68]",
        // Switch stacks, keeping the caller's rsp in rbx (its own value is already in ctx)
        // and ctx on the new stack; the two pushes keep the call 16-byte aligned.
        "mov rbx, rsp",
        "mov rsp, rcx",
        "push rdi",
        "push rdi",
        "mov rax, rsi",
        "mov rsi, rdx",
        "call rax",
        "pop rdi",
        "mov rsp, rbx",
        "mov rbx, [rdi + 0]",
        "ret",
    )
}

/// Loads `*ctx` and returns `value` from the `save_and_call` that filled it.
///
/// # Safety
/// The memory of the process must be exactly as it was when `*ctx` was saved, at least the
/// stack above `ctx.rsp` and everything the caller of `save_and_call` will touch.
#[unsafe(naked)]
pub unsafe extern "C" fn resume(ctx: *const Context, value: usize) -> ! {
    core::arch::naked_asm!(
        "mov rax, rsi",
        "mov rbx, [rdi + 0]",
        "mov rbp, [rdi + 8]",
        "mov r12, [rdi + 16]",
        "mov r13, [rdi + 24]",
        "mov r14, [rdi + 32]",
        "mov r15, [rdi + 40]",
        "ldmxcsr [rdi + 64]",
        "fldcw [rdi + 68]",
        "mov rsp, [rdi + 48]",
        "jmp qword ptr [rdi + 56]",
    )
}

/// Calls `f(arg)` with the stack pointer at `stack_top`; `f` must never return.
///
/// # Safety
/// `stack_top` must be the 16-byte-aligned top of a mapped, writable stack large enough for `f`.
#[unsafe(naked)]
pub unsafe extern "C" fn run_on_stack(
    stack_top: usize,
    f: unsafe extern "C" fn(*mut c_void) -> !,
    arg: *mut c_void,
) -> ! {
    core::arch::naked_asm!(
        "mov rsp, rdi",
        "xor ebp, ebp",
        "mov rdi, rdx",
        // A call pushes a return address, so the callee sees rsp = 8 mod 16 as the ABI wants.
        "call rsi",
        "ud2",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn capture(ctx: *mut Context, arg: *mut c_void) -> usize {
        // SAFETY: the test passes a valid context and a pointer to an `Option<Context>`.
        unsafe { *(arg as *mut Option<Context>) = Some(*ctx) };
        0
    }

    #[test]
    fn save_returns_zero_then_resume_returns_value() {
        let mut ctx = Context::default();
        let mut saved: Option<Context> = None;
        let mut passes = 0u32;
        let stack = vec![0u8; 64 << 10];
        let top = (stack.as_ptr() as usize + stack.len()) & !15;
        // SAFETY: ctx, saved and the stack outlive both returns; resume is called while this
        // frame is live and unchanged above the saved stack pointer.
        let r =
            unsafe { save_and_call(&mut ctx, capture, &mut saved as *mut _ as *mut c_void, top) };
        let passes_now = std::hint::black_box(&mut passes);
        *passes_now += 1;
        if r == 0 {
            let s = saved.expect("capture ran");
            assert_ne!(s.rsp, 0);
            assert_ne!(s.rip, 0);
            // SAFETY: this frame is still live; resuming returns 42 from the call above.
            unsafe { resume(&s, 42) };
        }
        assert_eq!(r, 42);
        assert_eq!(passes, 2);
    }
}
