"""Real SIP peers for the telephony tests, all on 127.0.0.1: baresip (a UA that dials, answers, plays a WAV, records,
sends DTMF), SIPp (scripted UAC scenarios in tests/sipp/) and Kamailio (the dispatcher of deploy/kamailio/)."""
import os

import pytest


def needs(available: bool, what: str) -> pytest.MarkDecorator:
    """Skip a test whose peer is missing on a developer's machine; under CI the test runs and fails instead, since
    `scripts/setup.sh test` installs every peer and a silent skip would hide a broken set-up."""
    return pytest.mark.skipif(not available and not os.environ.get("CI"),
                              reason=f"{what} is not installed (scripts/setup.sh test installs it)")
