"""Hold GPU memory through the CUDA driver API alone (ctypes on libcuda): no package.

``python cuda_alloc.py MIB SECONDS``: creates a context on device 0 (the first GPU
``CUDA_VISIBLE_DEVICES`` gives), allocates MIB MiB, prints ``allocated``, holds it
for SECONDS, frees it and exits 0.  Exits 3 with the driver's error otherwise.
"""

from __future__ import annotations

import ctypes
import sys
import time


def _driver() -> ctypes.CDLL:
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    print("no libcuda.so: this machine has no NVIDIA driver", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    mib, hold = int(sys.argv[1]), float(sys.argv[2])
    cuda = _driver()

    def check(what: str, code: int) -> None:
        if code != 0:
            text = ctypes.c_char_p()
            cuda.cuGetErrorString(code, ctypes.byref(text))
            message = (text.value or b"?").decode()
            if code == 2:  # CUDA_ERROR_OUT_OF_MEMORY: say it as frameworks do
                print(f"RuntimeError: CUDA out of memory ({what}: {message})", file=sys.stderr)
            else:
                print(f"{what} failed: {code} {message}", file=sys.stderr)
            sys.exit(3)

    check("cuInit", cuda.cuInit(0))
    device = ctypes.c_int()
    check("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(device), 0))
    context = ctypes.c_void_p()
    check("cuCtxCreate", cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device))
    pointer = ctypes.c_uint64()
    size = ctypes.c_size_t(mib * 1024 * 1024)
    check("cuMemAlloc", cuda.cuMemAlloc_v2(ctypes.byref(pointer), size))
    check("cuMemsetD8", cuda.cuMemsetD8_v2(pointer, ctypes.c_ubyte(1), size))
    print("allocated", flush=True)
    time.sleep(hold)
    cuda.cuMemFree_v2(pointer)
    cuda.cuCtxDestroy_v2(context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
