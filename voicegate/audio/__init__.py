"""Audio utilities and detectors on 16 kHz mono PCM: resampling, levels, Silero VAD."""
