! ckpt: Fortran interface to the checkpoint library's C ABI (include/ckpt.h), over ISO_C_BINDING.
!
! Configuration comes from the environment (CKPT_DIR, CKPT_INTERVAL, ...; see the README).
! Typical use, first thing in the main program:
!
!     use ckpt
!     if (ckpt_restore() /= CKPT_OK .or. ckpt_init() /= CKPT_OK) then
!        print *, 'ckpt: ', ckpt_message()
!        stop 75
!     end if
!
! An unmodified Fortran program can also be checkpointed by preloading libckpt.so.
module ckpt
  use, intrinsic :: iso_c_binding, only: c_int, c_size_t, c_ptr, c_char, c_null_char, c_f_pointer
  implicit none
  private
  public :: ckpt_restore, ckpt_init, ckpt_checkpoint_now, ckpt_exclude, ckpt_shutdown
  public :: ckpt_strerror_c, ckpt_last_error_c, ckpt_message, ckpt_error_name

  integer(c_int), parameter, public :: CKPT_OK = 0, CKPT_ECONFIG = 1, CKPT_EIO = 2, &
       CKPT_EREFUSED = 3, CKPT_ECHECKPOINT = 4, CKPT_ECORRUPT = 5, CKPT_EALLCORRUPT = 6, &
       CKPT_EWRONGBINARY = 7, CKPT_ELAYOUT = 8, CKPT_ENOCHECKPOINT = 9, CKPT_ESTOREBUSY = 10, &
       CKPT_EBUSY = 11, CKPT_ENOTINIT = 12, CKPT_EALREADY = 13, CKPT_EASLR = 14

  interface
     integer(c_int) function ckpt_restore() bind(C, name="ckpt_restore")
       import :: c_int
     end function ckpt_restore
     integer(c_int) function ckpt_init() bind(C, name="ckpt_init")
       import :: c_int
     end function ckpt_init
     integer(c_int) function ckpt_checkpoint_now() bind(C, name="ckpt_checkpoint_now")
       import :: c_int
     end function ckpt_checkpoint_now
     ! Pass c_loc(array) and the byte count (e.g. size(array) * storage_size(array) / 8).
     integer(c_int) function ckpt_exclude(start, len) bind(C, name="ckpt_exclude")
       import :: c_int, c_ptr, c_size_t
       type(c_ptr), value :: start
       integer(c_size_t), value :: len
     end function ckpt_exclude
     integer(c_int) function ckpt_shutdown() bind(C, name="ckpt_shutdown")
       import :: c_int
     end function ckpt_shutdown
     type(c_ptr) function ckpt_strerror_c(code) bind(C, name="ckpt_strerror")
       import :: c_int, c_ptr
       integer(c_int), value :: code
     end function ckpt_strerror_c
     type(c_ptr) function ckpt_last_error_c() bind(C, name="ckpt_last_error")
       import :: c_ptr
     end function ckpt_last_error_c
  end interface

contains

  ! The full message of the last failing call.
  function ckpt_message() result(msg)
    character(:), allocatable :: msg
    msg = from_c(ckpt_last_error_c())
  end function ckpt_message

  ! A description of an error code.
  function ckpt_error_name(code) result(msg)
    integer(c_int), intent(in) :: code
    character(:), allocatable :: msg
    msg = from_c(ckpt_strerror_c(code))
  end function ckpt_error_name

  function from_c(p) result(s)
    type(c_ptr), intent(in) :: p
    character(:), allocatable :: s
    character(kind=c_char), pointer :: chars(:)
    integer :: n
    call c_f_pointer(p, chars, [4096])
    n = 0
    do while (n < 4096)
       if (chars(n + 1) == c_null_char) exit
       n = n + 1
    end do
    allocate(character(n) :: s)
    s = transfer(chars(1:n), s)
  end function from_c
end module ckpt
