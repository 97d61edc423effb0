"""Local labs: a topology on one host, one network namespace per device, wired by nsm-local.

`lab.up` / `lab.down` / `lab.status`, `check.ping_loopbacks`; what `up` created is recorded in the lab's
directory (`/run/nsm-topo/<topology>/lab.json`) so that `down` removes exactly that, also after a crash.
"""
