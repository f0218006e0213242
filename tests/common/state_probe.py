# What a script can read that two fresh processes should not share: random numbers from every
# source a script reaches for, and the state of every random generator the loaded modules
# hold (found by looking, as the zygote finds the ones it reseeds). `probe()` returns them by
# name. What a fork cannot renew (the hash secret, the address layout, AT_RANDOM) is left to
# `SHARED` in tests/escape.rs, which checks it is renewed with each zygote.
import hashlib, os, random, secrets, sys, tempfile, uuid

import numpy as np
import pandas as pd


def generator_states():
    kinds = (random.Random, np.random.RandomState, np.random.Generator, np.random.BitGenerator)
    states = {}
    for module_name, module in sorted(sys.modules.items()):
        for name, value in sorted(getattr(module, "__dict__", {}).items()):
            if isinstance(value, kinds) and not isinstance(value, random.SystemRandom):
                if isinstance(value, np.random.Generator):
                    state = value.bit_generator.state
                elif isinstance(value, (np.random.RandomState, random.Random)):
                    state = value.get_state() if hasattr(value, "get_state") else value.getstate()
                else:
                    state = value.state
                states[f"{module_name}.{name}"] = hashlib.sha256(repr(state).encode()).hexdigest()
    return states


def probe():
    values = {
        "numpy.random.rand": repr(np.random.rand()),
        "numpy.default_rng": repr(np.random.default_rng().random()),
        "random.random": repr(random.random()),
        "secrets.token_hex": secrets.token_hex(8),
        "uuid.uuid4": str(uuid.uuid4()),
        "tempfile name": next(tempfile._get_candidate_names()),
        "os.urandom": os.urandom(8).hex(),
        "DataFrame.sample": repr(pd.DataFrame({"x": range(1000)}).sample(5).index.tolist()),
    }
    values.update(generator_states())
    return values
