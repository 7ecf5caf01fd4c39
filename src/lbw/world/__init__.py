"""The built-in world: a procedural character generator, a small SD1.5-architecture model trained on it, its LoRAs.

``generator`` draws pictures with masks and captions; ``measure`` reads colours per region; ``training`` trains
the model and the LoRAs (deterministic, resumable); ``evaluate`` checks that the model really draws.
"""
