"""Deleting a user costs the map sessions nothing: the work is counted, not timed."""

from twisted.trial import unittest

from headscale_tw.control.users import UserAdmin
from tests.control._harness import Harness


class UserDeleteWorkTests(unittest.TestCase):
    """A deleted user reaches only the sessions that could see its nodes, and it owns none."""

    def test_delete_visits_no_viewer(self):
        """At 10 and 40 streaming nodes, deleting a user visits no viewer, builds no frame and writes nothing."""
        for n in (10, 40):
            h = Harness(self)
            nodes = [h.register(f"n{i}")[0] for i in range(n)]
            streams = [h.stream(node) for node in nodes]
            carol = h.add_user("carol")
            users = UserAdmin(h.db.users, h.state.now, h.state, h.notifier)
            h.clock.advance(1)  # let any batched change from the joins go out first
            writes = [len(s.writes) for s in streams]
            h.notifier.viewers_visited = h.notifier.frames_built = 0
            h.run(users.delete(carol.id))
            h.clock.advance(1)
            self.assertNotIn(carol.id, h.state.users)
            self.assertEqual((h.notifier.viewers_visited, h.notifier.frames_built), (0, 0))
            self.assertEqual([len(s.writes) for s in streams], writes)

    def test_rename_visits_the_owners_watchers(self):
        """Renaming the user who owns every node reaches every stream: the count is not stuck at zero."""
        h = Harness(self)
        nodes = [h.register(f"n{i}")[0] for i in range(5)]
        streams = [h.stream(node) for node in nodes]
        users = UserAdmin(h.db.users, h.state.now, h.state, h.notifier)
        h.clock.advance(1)
        writes = [len(s.writes) for s in streams]
        h.notifier.viewers_visited = 0
        h.run(users.rename(h.user.id, "alicia"))
        h.clock.advance(1)
        self.assertGreater(h.notifier.viewers_visited, 0)
        self.assertTrue(all(len(s.writes) > w for s, w in zip(streams, writes)))
