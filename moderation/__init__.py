"""Moderation: the building blocks for reports, bans, evidence and watching streams.

- ``store``: reports, bans and the audit log in SQLite (:class:`ModerationStore`).
- ``auth``: moderators, their secrets, and the guard for ``/moderate`` routes.
- ``ringbuffer``: the last seconds of a stream's encoded frames (:class:`RingBuffer`).
- ``recorder``: encoded frames into WebM without decoding, and recording retention.
- ``analyzers``: flags from sampled decoded frames (black, frozen, no face).

See docs/moderation.md.
"""
