"""A short soak (about 20 s): tests/soak.py against a real twistd daemon."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.soak import rss_flat, run_against_twistd


class SoakTests(TestCase):
    timeout = 300

    async def test_short_soak_loses_nothing_and_stays_flat(self) -> None:
        figures = await run_against_twistd(self, 20.0, sessions=100, sockets=20)
        print(f"\nsoak: {figures}")
        self.assertEqual(figures["sockets"], 2000)
        self.assertEqual(figures["corrupted_or_lost_streams"], 0, figures)
        self.assertGreater(figures["bytes_echoed"], 0)
        self.assertGreater(figures["churn_sessions"], 10, figures)
        self.assertEqual(figures["churn_failed"], 0, figures)
        self.assertTrue(rss_flat(figures), figures)
