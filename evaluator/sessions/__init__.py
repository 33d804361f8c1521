"""Sessions: multi-turn conversations evaluated as a whole, once they go quiet.

``tracker`` decides completion across any number of samplers, exactly once in effect. It imports
``constants`` and ``streams`` only; the sampler feeds it and its chore hands completed sessions
to the fleet.
"""
