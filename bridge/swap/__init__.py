"""One swap: the session, its phases (resolve, lease, link, hand-over, hand-back) and restore."""
