"""`nsm-agent`: both agent roles of a router (client and endpoint) in one process, for one router or many."""
