"""Speech: audio frames and codecs, VAD, streaming ASR, TTS, endpointing and barge-in."""
