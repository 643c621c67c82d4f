/*
 * bcryptprimitives.dll for Wine 8, which lacks it. Rust's std (1.78+) takes its randomness
 * from ProcessPrng in this DLL, so without it every Rust program dies at load under Wine.
 * This stand-in serves ProcessPrng from advapi32's RtlGenRandom (exported as
 * SystemFunction036), which Wine has. Built by .ci/run with the mingw-w64 gcc and found by
 * Wine through WINEPATH; used only to run the Windows test binaries, never shipped.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
