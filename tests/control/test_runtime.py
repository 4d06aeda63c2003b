"""Tests for :class:`~headscale_tw.control.state.NodeRuntimes`, the one writer of nodes' runtime facts."""

from twisted.trial import unittest

from headscale_tw.control.notifier import DeltaMessage, HeldDelta
from tests.control._harness import Harness


class NodeRuntimesTests(unittest.TestCase):
    """Runtime facts change only through ``state.runtime``'s methods, which mark peer-visible changes."""

    def setUp(self):
        self.h = Harness(self)
        self.node, _ = self.h.register("a")
        self.runtime = self.h.state.runtime

    def test_online_and_offline(self):
        """Coming online is reported once and bumps the generation; going offline bumps it again."""
        generation = self.h.state.generation(self.node.id)
        self.assertEqual([self.runtime.came_online(self.node.id), self.runtime.came_online(self.node.id)],
                         [True, False])
        self.assertEqual(self.h.state.generation(self.node.id), generation + 1)
        self.runtime.disconnected(self.node.id)
        self.assertEqual(self.runtime[self.node.id].disconnected_at, self.h.now())
        self.runtime.went_offline(self.node.id)
        self.assertFalse(self.runtime[self.node.id].online)
        self.assertEqual(self.h.state.generation(self.node.id), generation + 2)

    def test_cap(self):
        """A new capability version is recorded and reported as a change; 0 and the same version are not."""
        current = self.runtime[self.node.id].cap
        self.assertEqual([self.runtime.set_cap(self.node.id, 0), self.runtime.set_cap(self.node.id, current),
                          self.runtime.set_cap(self.node.id, current + 1)], [False, False, True])
        self.assertEqual(self.runtime[self.node.id].cap, current + 1)

    def test_elsewhere(self):
        """A stream on another instance marks the node online there; its end marks it offline since now."""
        self.runtime.set_elsewhere(self.node.id, True)
        self.assertTrue(self.runtime.set_online(self.node.id, True))
        facts = self.runtime[self.node.id]
        self.assertEqual((facts.online, facts.elsewhere, facts.disconnected_at), (True, True, None))
        self.assertFalse(self.runtime.set_online(self.node.id, True))
        self.runtime.set_elsewhere(self.node.id, False)
        self.assertTrue(self.runtime.set_online(self.node.id, False))
        self.assertEqual((facts.online, facts.elsewhere, facts.disconnected_at), (False, False, self.h.now()))

    def test_online_since(self):
        """The HA rank is recorded once per change; setting the same time again reports no change."""
        when = self.h.now()
        self.assertEqual([self.runtime.set_online_since(self.node.id, when),
                          self.runtime.set_online_since(self.node.id, when)], [True, False])
        self.assertEqual(self.runtime[self.node.id].online_since, when)
        self.assertTrue(self.runtime.set_online_since(self.node.id, None))

    def test_follows_the_cache(self):
        """A deleted node's facts are dropped with its cached row; the mapping is read-only."""
        self.assertIn(self.node.id, self.runtime)
        self.h.run(self.h.admin.delete(self.node.id))
        self.assertNotIn(self.node.id, self.runtime)
        self.assertFalse(hasattr(self.runtime, "__setitem__"))


class BatchRecordTests(unittest.TestCase):
    """The notifier's batching records merge changes and key messages by content."""

    def test_last_word_per_peer(self):
        """A peer removed and changed in one merge ends changed; a later removal wins; filters are replaced."""
        held = HeldDelta()
        held.merge(changed={1}, removed={1, 2}, packet_filter=b"[]", ssh=None, self_node=False)
        self.assertEqual(held.peers, {1: True, 2: False})
        held.merge(changed=(), removed={1}, packet_filter=b"[1]", ssh=None, self_node=True)
        self.assertEqual((held.peers, held.packet_filter, held.self_node), ({1: False, 2: False}, b"[1]", True))

    def test_message_kinds(self):
        """A delta's response type follows its content; an empty one is false; equal ones are one key."""
        self.assertFalse(DeltaMessage())
        self.assertEqual(DeltaMessage(packet_filter=b"[]", removed=(1,)).response_type, "policy")
        self.assertEqual(DeltaMessage(removed=(1,)).response_type, "peers")
        self.assertEqual(DeltaMessage(online=((1, True),)).response_type, "patch")
        self.assertEqual(DeltaMessage(self_of=3).response_type, "self")
        self.assertEqual(len({DeltaMessage(removed=(1,)), DeltaMessage(removed=(1,))}), 1)


class SingleWriterTests(unittest.TestCase):
    """Only ``NodeRuntimes`` assigns the fields of a ``NodeRuntime``."""

    ALLOWED = {"control/state.py"}
    FIELDS = {"online", "cap", "disconnected_at", "elsewhere", "online_since"}

    def test_no_other_writer(self):
        """No module but state.py assigns online, cap, disconnected_at, elsewhere or online_since of a runtime."""
        import ast
        from pathlib import Path

        import headscale_tw

        root = Path(headscale_tw.__file__).parent
        writers = []
        for path in sorted(root.rglob("*.py")):
            name = path.relative_to(root).as_posix()
            if name in self.ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                targets = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                    targets = [node.target]
                for target in targets:
                    if (isinstance(target, ast.Attribute) and target.attr in self.FIELDS
                            and "runtime" in ast.unparse(target.value)):
                        writers.append(f"{name}:{node.lineno}")
        self.assertEqual(writers, [])
