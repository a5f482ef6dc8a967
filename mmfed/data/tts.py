"""Offline speech synthesis: libespeak-ng (shipped with its voice data by PyPI `espeakng-loader`) via ctypes.

Used to build the embedded `digits-av` scenario, so nothing has to be downloaded. Synthesis runs in the
library's synchronous mode: no audio device, no background thread; our callback collects the samples
before `espeak_Synchronize` returns.

Determinism: libespeak-ng keeps state in function-local statics (pitch flutter phase, gain control, echo
buffer, noise seed) that no API call resets, so a word spoken twice in one process comes out different
(measured: 6 calls, 6 different waveforms, even with espeak_Terminate + espeak_Initialize in between).
Only unloading the library resets them. So each call loads, initialises, speaks, terminates and unloads
it, under one process-wide lock because the library is a single global instance. Cost: ~8 ms for one
word instead of ~1.5 ms, mostly re-reading the voice's dictionary; fine for building a scenario once.
"""

from __future__ import annotations

import _ctypes  # dlclose(): the only way to reset libespeak-ng's internal state
import ctypes
import threading
from pathlib import Path

import numpy as np

from mmfed.errors import DataError

SAMPLE_RATE = 22050

# espeak_AUDIO_OUTPUT: SYNCHRONOUS = retrieval through the callback, returning only when synthesis is done.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# Without this flag espeak_Initialize calls exit() when its data is missing, killing the interpreter.
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0
# espeak_PARAMETER
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_RATE_LIMITS = (80, 450)  # words per minute espeak-ng accepts
_INSTALL_HINT = "install it with `pip install espeakng-loader` (it ships libespeak-ng and its voice data)"

# int callback(short *wav, int numsamples, espeak_EVENT *events): return 0 to continue, 1 to abort.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()
_chunks: list[np.ndarray] = []


def _on_samples(wav: ctypes._Pointer, numsamples: int, events: int | None) -> int:
    # Copy: the buffer belongs to espeak and is reused for the next chunk.
    if numsamples > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
    return 0


# Module-level reference: ctypes does not keep the callback alive, and espeak holds on to it.
_callback = _SynthCallback(_on_samples)


def _paths() -> tuple[str, str]:
    """(library path, voice data path) from espeakng-loader, or a DataError saying what to install."""
    try:
        import espeakng_loader
    except ImportError as exc:
        raise DataError(f"speech synthesis needs the package 'espeakng-loader'; {_INSTALL_HINT}") from exc
    lib_path = espeakng_loader.get_library_path()
    try:
        data_path = espeakng_loader.get_data_path()
    except RuntimeError as exc:
        raise DataError(f"espeak-ng voice data is missing ({exc}); reinstall: {_INSTALL_HINT}") from exc
    return lib_path, data_path


def _open() -> ctypes.CDLL:
    """Load libespeak-ng afresh and initialise it (caller holds the lock and must call _close)."""
    lib_path, data_path = _paths()
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as exc:
        raise DataError(
            f"cannot load libespeak-ng from {lib_path} ({exc}); reinstall: {_INSTALL_HINT}"
        ) from exc

    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None

    rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(Path(data_path)).encode(), _INITIALIZE_DONT_EXIT
    )
    if rate != SAMPLE_RATE:
        _close(lib, terminate=False)
        raise DataError(
            f"libespeak-ng at {lib_path} failed to initialise with data {data_path} (returned {rate}); "
            f"reinstall: {_INSTALL_HINT}"
        )
    lib.espeak_SetSynthCallback(_callback)
    # espeak_Initialize seeds its noise generator from time(); a fixed seed makes breathy voices repeatable.
    lib.espeak_ng_SetRandSeed(0)
    return lib


def _close(lib: ctypes.CDLL, terminate: bool = True) -> None:
    if terminate:
        lib.espeak_Terminate()
    # ctypes never unloads; without dlclose the next CDLL() returns the same instance with its old statics.
    _ctypes.dlclose(lib._handle)


def available_voices() -> list[str]:
    """Names of the language voices in the shipped data (e.g. 'en', 'en-us', 'en-gb-scotland').

    A variant can be appended to any of them: 'en-us+f3', 'en+m3' (variants live in voices/!v).
    """
    _, data_path = _paths()
    return sorted(p.name.lower() for p in (Path(data_path) / "lang").rglob("*") if p.is_file())


def synthesize(
    text: str, voice: str = "en", rate: int = 175, pitch: int = 50, pitch_range: int = 50
) -> tuple[np.ndarray, int]:
    """Speak `text`; return (float32 mono waveform in [-1, 1], sample rate 22050).

    `voice` is an espeak-ng voice name, optionally with a variant ('en-gb-scotland', 'en-us+f3');
    `rate` is in words per minute (80..450); `pitch` and `pitch_range` are 0..100 (50 = the voice's own).
    The same arguments give the same samples, whatever was spoken before in this process.
    """
    if not text.strip():
        raise ValueError("synthesize: text is empty; give at least one word")
    if not _RATE_LIMITS[0] <= rate <= _RATE_LIMITS[1]:
        raise ValueError(
            f"synthesize: rate must be {_RATE_LIMITS[0]}..{_RATE_LIMITS[1]} words/min, got {rate}"
        )
    for name, value in (("pitch", pitch), ("pitch_range", pitch_range)):
        if not 0 <= value <= 100:
            raise ValueError(f"synthesize: {name} must be 0..100, got {value}")

    with _lock:
        lib = _open()
        try:
            if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise DataError(
                    f"espeak-ng voice {voice!r} not found; use a language voice such as 'en', 'en-us', "
                    "'en-gb-scotland' (see mmfed.data.tts.available_voices()), optionally with a variant "
                    "like '+f3'"
                )
            # Set after the voice: selecting a voice resets these to its defaults. Absolute (relative=0).
            for param, value in ((_RATE, rate), (_VOLUME, 100), (_PITCH, pitch), (_RANGE, pitch_range)):
                lib.espeak_SetParameter(param, int(value), 0)
            data = text.encode("utf-8") + b"\0"
            _chunks.clear()
            status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status == _EE_OK:
                status = lib.espeak_Synchronize()
            samples = np.concatenate(_chunks) if _chunks else np.zeros(0, dtype=np.int16)
        finally:
            _chunks.clear()
            _close(lib)
    if status != _EE_OK or samples.size == 0:
        raise DataError(f"espeak-ng produced no audio for {text!r} with voice {voice!r} (status {status})")
    return samples.astype(np.float32) / 32768.0, SAMPLE_RATE
