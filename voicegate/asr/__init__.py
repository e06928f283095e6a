"""Speech recognition: keyword spotting (PocketSphinx) and transcripts (Whisper, Vosk) behind one interface."""
