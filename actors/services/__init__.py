"""The services the handlers call: each orchestrates storage and the actors for one part of the API
(accounts and tokens, API keys, bookings, resources and their hours, calendar feeds, webhooks,
maintenance). They do the I/O that the pure rules of actors/domain leave out; a booking change goes to
its actor (actors/bookings.py, actors/resources.py), which writes it."""
