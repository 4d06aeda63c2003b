"""Tests for headscale_tw.control.ipalloc."""

from twisted.trial import unittest

from headscale_tw.control.ipalloc import AddressesExhausted, IPAllocator
from headscale_tw.errors import InvalidInput
from tests.control._harness import Harness


class IPAllocatorTests(unittest.TestCase):
    """Addresses come out in order, skip reserved ones and follow the used set."""

    def test_sequential_first_addresses(self):
        """The first node gets 100.64.0.1 and fd7a:115c:a1e0::1, the next one .2 and ::2."""
        alloc = IPAllocator("100.64.0.0/10", "fd7a:115c:a1e0::/48")
        self.assertEqual(alloc.allocate(), ("100.64.0.1", "fd7a:115c:a1e0::1"))
        self.assertEqual(alloc.allocate(), ("100.64.0.2", "fd7a:115c:a1e0::2"))

    def test_reserved_and_edges_skipped(self):
        """The quad-100 address, the network and the last address are never handed out."""
        alloc = IPAllocator("100.100.100.96/29", None)
        got = []
        while True:
            try:
                got.append(alloc.allocate()[0])
            except AddressesExhausted:
                break
        self.assertEqual(got, ["100.100.100.97", "100.100.100.98", "100.100.100.99", "100.100.100.101", "100.100.100.102"])

    def test_chromeos_range_skipped(self):
        """Sequential allocation jumps over 100.115.92.0/23."""
        alloc = IPAllocator("100.115.88.0/21", None)
        alloc.load(f"100.115.{third}.{fourth}" for third in range(88, 92) for fourth in range(256))
        self.assertEqual(alloc.allocate()[0], "100.115.94.0")

    def test_ipv6_resolver_skipped(self):
        """fd7a:115c:a1e0::53 is never given to a node."""
        alloc = IPAllocator(None, "fd7a:115c:a1e0::/48")
        alloc.load(f"fd7a:115c:a1e0::{n:x}" for n in range(1, 0x53))
        self.assertEqual(alloc.allocate()[1], "fd7a:115c:a1e0::54")

    def test_used_addresses_skipped(self):
        """Addresses loaded from the store are not handed out again."""
        alloc = IPAllocator("100.64.0.0/10", "fd7a:115c:a1e0::/48")
        alloc.load(["100.64.0.1", "100.64.0.2/32", "fd7a:115c:a1e0::1"])
        self.assertEqual(alloc.allocate(), ("100.64.0.3", "fd7a:115c:a1e0::2"))

    def test_random_wraps(self):
        """Random allocation scans upward from its start and wraps to the beginning."""
        alloc = IPAllocator("10.0.0.0/29", None, "random", randbelow=lambda n: n - 1)
        self.assertEqual(alloc.allocate()[0], "10.0.0.6")
        self.assertEqual(alloc.allocate()[0], "10.0.0.1")

    def test_scatter_leaves_the_sequential_cursor(self):
        """``scatter`` takes a free address from a random start; sequential allocation goes on where it was."""
        alloc = IPAllocator("10.0.0.0/24", None, randbelow=lambda n: 99)
        self.assertEqual(alloc.allocate()[0], "10.0.0.1")
        self.assertEqual(alloc.allocate(scatter=True)[0], "10.0.0.100")
        self.assertEqual(alloc.allocate()[0], "10.0.0.2")

    def test_random_reuses_released(self):
        """A released address can be allocated again."""
        alloc = IPAllocator("10.0.0.0/29", None, "random", randbelow=lambda n: 0)
        first = alloc.allocate()[0]
        alloc.release(first)
        self.assertEqual(alloc.allocate()[0], first)

    def test_exhausted(self):
        """A full prefix raises AddressesExhausted and does not leak the other family."""
        alloc = IPAllocator("10.0.0.0/30", "fd00::/126")
        alloc.allocate()
        alloc.allocate()
        self.assertRaises(AddressesExhausted, alloc.allocate)

    def test_bad_config(self):
        """Bad prefixes or strategies are rejected with a message naming the setting."""
        e = self.assertRaises(InvalidInput, IPAllocator, "nonsense", None)
        self.assertIn("prefixes.v4", str(e))
        self.assertRaises(InvalidInput, IPAllocator, "fd00::/64", None)
        self.assertRaises(InvalidInput, IPAllocator, "10.0.0.0/8", None, "fancy")
        self.assertRaises(InvalidInput, IPAllocator, None, None)


class AllocationWithStoreTests(unittest.TestCase):
    """The used set survives a reload and deleting a node frees its addresses."""

    def test_survives_reload(self):
        """A fresh state over the same store does not reuse allocated addresses."""
        h = Harness(self)
        a, _ = h.register("a")
        h2 = Harness(self, db=h.db)
        b, _ = h2.register("b")
        self.assertNotEqual(a.ipv4, b.ipv4)
        self.assertNotEqual(a.ipv6, b.ipv6)

    def test_collision_retries_away_from_the_other_instance(self):
        """After another instance on the same store took the address, the retry goes to a random free one.

        Two instances allocating sequentially from the same view would otherwise collide on the next
        address too, once per registration each has in flight (two workers under load exhausted all
        attempts this way). The instance's own next allocation is sequential again.
        """
        h = Harness(self)
        h2 = Harness(self, db=h.db)  # loaded before h's nodes exist: a stale view, as under load
        taken = {h.register(f"a{i}")[0].ipv4 for i in range(3)}
        self.assertEqual(taken, {"100.64.0.1", "100.64.0.2", "100.64.0.3"})
        retried, _ = h2.register("b")
        self.assertNotIn(retried.ipv4, taken | {f"100.64.0.{i}" for i in range(4, 40)})
        after, _ = h2.register("c")
        self.assertEqual(after.ipv4, "100.64.0.4")

    def test_collision_reads_only_new_rows(self):
        """A collision reads the rows created since this instance last looked, not every node's addresses.

        Two workers under load collided 3,110 times in 10,000 registrations, and each collision used to
        read all used addresses.
        """
        h = Harness(self)
        for i in range(20):
            h.register(f"old{i}")
        h2 = Harness(self, db=h.db)  # has read the first 20
        fresh = [h.register(f"new{i}")[0] for i in range(3)]  # not yet seen by h2
        reads = []
        read = h.db.nodes.addresses_after

        async def recording(after_id, held=()):
            result = await read(after_id, held)
            reads.append((after_id, result))
            return result

        self.patch(h.db.nodes, "addresses_after", recording)
        node, _ = h2.register("b")
        ((after_id, (addresses, highest)),) = reads
        self.assertEqual(after_id, 20)
        self.assertEqual(addresses, {a for n in fresh for a in (n.ipv4, n.ipv6)})
        self.assertEqual(highest, max(n.id for n in fresh))
        self.assertNotIn(node.ipv4, addresses)
        after, _ = h2.register("c")  # sequential again, past what the read marked
        self.assertEqual(after.ipv4, "100.64.0.24")

    def test_release_on_delete(self):
        """After a delete and reload, the freed address is handed out again."""
        h = Harness(self)
        a, _ = h.register("a")
        h.register("b")
        h.run(h.admin.delete(a.id))
        h2 = Harness(self, db=h.db)
        c, _ = h2.register("c")
        self.assertEqual(c.ipv4, a.ipv4)


class _CountingNames(dict):
    """A name index that counts full scans (iteration, ``items``, copies)."""

    scans = 0

    def __iter__(self):
        type(self).scans += 1
        return super().__iter__()

    def items(self):
        type(self).scans += 1
        return super().items()

    def keys(self):
        type(self).scans += 1
        return super().keys()


class GivenNameLookupTests(unittest.TestCase):
    """Choosing a free given name probes the name index; it never scans every name."""

    def test_no_scan_per_registration(self):
        """create_node and free_name find ``box-2`` without iterating the names of all nodes."""
        h = Harness(self)
        h.register("box")
        h.register("box")
        h.state._names = _CountingNames(h.state._names)
        _CountingNames.scans = 0
        node, _ = h.register("box")
        self.assertEqual(node.given_name, "box-2")
        self.assertEqual(h.state.free_name("box", exclude=node.id), "box-2")
        self.assertEqual(h.state.free_name("box"), "box-3")
        self.assertEqual(_CountingNames.scans, 0)
