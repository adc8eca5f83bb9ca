"""Pairwise-masking secure aggregation (Bonawitz et al., CCS 2017): the server learns only the sum of the updates.

The data's path inside: a club's update, already clipped and noised by its privacy scope, is encoded in
fixed point (:mod:`.encoding`), masked with pseudorandom vectors from seeds the clubs agreed in pairs
(:mod:`.masks`), and sent. The masks cancel in the sum; a dropped club's are removed with t-of-n secret
shares (:mod:`.shamir`) its peers hold. Keys are signed with each club's FLARE certificate (:mod:`.identity`).
:mod:`.protocol` holds both sides' steps; :mod:`.controller` and :mod:`.club` run them in FLARE.
"""
