"""Text-to-speech for the phone line: edge-tts and espeak-ng engines, a PCM disk cache and a deadline-driven fallback."""

from voice.tts.cache import TtsCache
from voice.tts.edge import EdgeTtsEngine
from voice.tts.espeak import ESPEAK_INSTALL_HINT, EspeakTtsEngine
from voice.tts.resilient import PrerenderReport, ResilientTts, Synthesis, SynthesisOutcome, TtsStatus, clauses
from voice.tts.speech_text import normalize_text_for_speech

__all__ = [
    "ESPEAK_INSTALL_HINT", "EdgeTtsEngine", "EspeakTtsEngine", "PrerenderReport", "ResilientTts", "Synthesis",
    "SynthesisOutcome", "TtsCache", "TtsStatus", "clauses", "normalize_text_for_speech",
]
