! matmul.f90: dense matrix multiply, C += A*B, the Fortran analogue of examples/matmul.rs and of
! the paper's matrix-multiplication program (Table II: two 2048x2048 matrices, 50.8 MB).
!
! A plain program with no checkpointing calls: the tests run it under LD_PRELOAD of libckpt.so.
!
! Usage: matmul [SIZE [STEPS]]
!   SIZE  = matrix order n (default 1280). Memory ~ 24*n^2 bytes (A, B, C: allocatable,
!           column-major, real(8)).
!   STEPS = passes C += A*B (default 8). Time ~ STEPS * n^3.
!
! Memory pattern: A and B are written once; each pass writes C one column at a time.
!
! Measured on the 2-core development machine (gfortran -O2, GCC 12) with /usr/bin/time: CPU
! (user) time, wall time, max RSS. Other sessions shared the machine, so wall times are inflated.
!  command                  CPU      wall     max RSS
!  matmul 1280 3            1.6 s    1.6 s    40 MiB
!  matmul 1280 8 (default)  4.2 s    4.3 s    40 MiB
!  matmul 2048 4            12.3 s   12.4 s   98 MiB
!  matmul 2048 13           41 s     50 s     98 MiB
!  matmul 2048 25           80 s     100 s    98 MiB
!
! Output: a header line, then `digest <16 hex digits>`: 64-bit FNV-1a over the little-endian
! bytes of C's bit patterns in column order. Fortran has no unsigned integers and signed
! overflow is not defined, so the generator (xorshift64) uses only shifts and xors, and the
! hash keeps its state as two 32-bit halves so that no product exceeds 2**43.
program matmul_workload
    use, intrinsic :: iso_fortran_env, only: int64, real64, output_unit, error_unit
    implicit none

    integer(int64), parameter :: mask32 = 4294967295_int64
    integer(int64) :: n, steps, i, j, k, step
    real(real64), allocatable :: a(:, :), b(:, :), c(:, :)
    real(real64) :: bkj
    integer(int64) :: rng, hash_hi, hash_lo
    character(len=12) :: mib

    call parse_args(n, steps)
    write (mib, '(f12.1)') 24.0_real64 * real(n, real64)**2 / 1048576.0_real64
    write (output_unit, '(a,i0,a,i0,3a)') 'matmul: n=', n, ' steps=', steps, &
        ' matrices=', trim(adjustl(mib)), ' MiB'
    flush (output_unit)

    allocate (a(n, n), b(n, n), c(n, n))
    rng = 88172645463325252_int64
    do j = 1, n
        do i = 1, n
            a(i, j) = 2.0_real64 * next_f64(rng) - 1.0_real64
        end do
    end do
    do j = 1, n
        do i = 1, n
            b(i, j) = 2.0_real64 * next_f64(rng) - 1.0_real64
        end do
    end do
    c = 0.0_real64

    do step = 1, steps
        ! j-k-i order: the inner loop runs down contiguous columns of A and C.
        do j = 1, n
            do k = 1, n
                bkj = b(k, j)
                do i = 1, n
                    c(i, j) = c(i, j) + a(i, k) * bkj
                end do
            end do
        end do
    end do

    hash_hi = 3421674724_int64 ! 0xcbf29ce4
    hash_lo = 2216829733_int64 ! 0x84222325
    do j = 1, n
        do i = 1, n
            call digest_f64(c(i, j))
        end do
    end do
    write (output_unit, '(a,a)') 'digest ', hex8(hash_hi)//hex8(hash_lo)
    flush (output_unit)
    deallocate (a, b, c)

contains

    subroutine parse_args(n, steps)
        integer(int64), intent(out) :: n, steps
        character(len=64) :: arg
        integer :: nargs, stat

        n = 1280
        steps = 8
        nargs = command_argument_count()
        if (nargs > 2) call usage('too many arguments')
        if (nargs >= 1) then
            call get_command_argument(1, arg)
            if (trim(arg) == '-h' .or. trim(arg) == '--help') call usage('')
            read (arg, *, iostat=stat) n
            if (stat /= 0 .or. verify(trim(arg), '0123456789') /= 0) &
                call usage('arguments must be non-negative integers')
        end if
        if (nargs >= 2) then
            call get_command_argument(2, arg)
            read (arg, *, iostat=stat) steps
            if (stat /= 0 .or. verify(trim(arg), '0123456789') /= 0) &
                call usage('arguments must be non-negative integers')
        end if
        if (n < 1 .or. n > 32768) call usage('SIZE is out of range')
        if (steps < 1) call usage('STEPS must be at least 1')
    end subroutine parse_args

    subroutine usage(why)
        character(len=*), intent(in) :: why
        if (len(why) > 0) write (error_unit, '(a,a)') 'matmul: ', why
        write (error_unit, '(a)') 'usage: matmul [SIZE [STEPS]]', &
            '  SIZE: matrix order n; memory about 24*n^2 bytes (A, B, C)', &
            '  STEPS: number of passes C += A*B (time about STEPS * n^3)', &
            '  defaults: SIZE=1280 STEPS=8; SIZE must be in 1..=32768'
        if (len(why) > 0) then
            stop 2
        else
            stop
        end if
    end subroutine usage

    ! xorshift64 (Marsaglia 2003); ishft is a logical shift, so no arithmetic can overflow.
    function next_f64(state) result(x)
        integer(int64), intent(inout) :: state
        real(real64) :: x
        state = ieor(state, ishft(state, 13))
        state = ieor(state, ishft(state, -7))
        state = ieor(state, ishft(state, 17))
        x = real(ishft(state, -11), real64) * (1.0_real64 / 9007199254740992.0_real64)
    end function next_f64

    ! FNV-1a step for one byte, on the 64-bit state held as (hash_hi, hash_lo): multiplying by
    ! the prime 2**40 + 435 is h*435 plus h shifted left by 40, done per half with carries.
    subroutine digest_byte(byte)
        integer(int64), intent(in) :: byte
        integer(int64) :: t
        hash_lo = ieor(hash_lo, byte)
        t = hash_lo * 435_int64
        hash_hi = iand(hash_hi * 435_int64 + ishft(t, -32) + ishft(hash_lo, 8), mask32)
        hash_lo = iand(t, mask32)
    end subroutine digest_byte

    subroutine digest_f64(x)
        real(real64), intent(in) :: x
        integer(int64) :: bits
        integer :: byte
        bits = transfer(x, bits)
        do byte = 0, 7
            call digest_byte(iand(ishft(bits, -8 * byte), 255_int64))
        end do
    end subroutine digest_f64

    function hex8(v) result(s)
        integer(int64), intent(in) :: v
        character(len=8) :: s
        character(len=16), parameter :: digits = '0123456789abcdef'
        integer :: p, nibble
        do p = 1, 8
            nibble = int(iand(ishft(v, -4 * (8 - p)), 15_int64))
            s(p:p) = digits(nibble + 1:nibble + 1)
        end do
    end function hex8

end program matmul_workload
