"""The domain beside the actors: typed messages and replies, pure rules and views. Nothing here does
I/O or knows HTTP or SQL; the actors (actors/bookings.py, actors/series.py) apply these rules and write."""
