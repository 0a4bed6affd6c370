"""Speech engines behind small interfaces: VAD, ASR, repair, MT, TTS."""
