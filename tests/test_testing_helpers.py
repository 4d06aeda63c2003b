"""The small test helpers in ``headscale_tw.testing`` that many tests lean on."""

from twisted.trial import unittest

from headscale_tw import secrets
from headscale_tw.testing.keys import with_wrong_secret
from headscale_tw.testing.prometheus import labelled_samples, sample_value, unlabelled_samples


class WithWrongSecretTests(unittest.TestCase):
    """``with_wrong_secret`` keeps kind and prefix and replaces the whole secret."""

    def test_secret_containing_dashes(self):
        """A secret with ``-`` in it (URL-safe base64 may have them) is replaced whole, not from its last dash."""
        key = "hskey-auth-AbCdEfGh1234-ab-cd_ef-" + "x" * 30
        self.assertEqual(with_wrong_secret(key), "hskey-auth-AbCdEfGh1234-" + "A" * 43)

    def test_parses_back_to_the_same_prefix(self):
        """The result is a well-formed key of the same kind and prefix, with a different secret."""
        key, prefix, secret = secrets.generate_key("api")
        kind, forged_prefix, forged_secret = secrets.parse_key(with_wrong_secret(key))
        self.assertEqual((kind, forged_prefix), ("api", prefix))
        self.assertNotEqual(forged_secret, secret)


class PrometheusSamplesTests(unittest.TestCase):
    """Reading an exposition by name, with and without labels."""

    EXPOSITION = (
        "# HELP up Up.\n# TYPE up gauge\nup 1.0\n"
        "# HELP hits_total Hits.\n# TYPE hits_total counter\n"
        'hits_total{route="/a"} 3.0\nhits_total{route="/b"} 4.0\n'
    )

    def test_unlabelled(self):
        """Only the sample without labels is kept."""
        self.assertEqual(unlabelled_samples(self.EXPOSITION), {"up": 1.0})

    def test_labelled(self):
        """A labelled sample is found by its exact labels; a missing one reads 0."""
        samples = labelled_samples(self.EXPOSITION)
        self.assertEqual(sample_value(samples, "hits_total", route="/b"), 4.0)
        self.assertEqual(sample_value(samples, "hits_total", route="/c"), 0.0)
        self.assertEqual(sample_value(samples, "up"), 1.0)
