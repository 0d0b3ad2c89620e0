"""The outbound address policy: which addresses parley connects to on a user's behalf, with and without
private addresses allowed. No I/O: addresses in, verdicts out."""

from __future__ import annotations

import ipaddress

import pytest

from adapters.outbound import AddressPolicy, OutboundRefused, refusal

PUBLIC_ONLY = AddressPolicy()
PRIVATE_TOO = AddressPolicy(allow_private=True)

# address, allowed when only public addresses are, allowed when private ones are too
VERDICTS = [
    ("127.0.0.1", False, True),
    ("10.1.2.3", False, True),
    ("172.16.0.1", False, True),
    ("192.168.1.1", False, True),
    ("100.64.0.1", False, True),  # shared address space (carrier-grade NAT)
    ("169.254.169.254", False, False),  # cloud metadata (AWS, GCP, Azure)
    ("100.100.100.200", False, False),  # Alibaba Cloud metadata
    ("0.0.0.0", False, False),
    ("::1", False, True),
    ("::ffff:127.0.0.1", False, True),
    ("::ffff:169.254.169.254", False, False),
    ("fe80::1", False, False),
    ("fd00:ec2::254", False, False),  # AWS metadata over IPv6
    ("fc00::1", False, True),
    ("224.0.0.1", False, False),
    ("8.8.8.8", True, True),
    ("2606:4700:4700::1111", True, True),
    # Beyond the brief's table: other ways to spell an address, and the rest of the always-refused kinds.
    ("::", False, False),
    ("0.1.2.3", False, False),
    ("255.255.255.255", False, False),
    ("240.0.0.1", False, False),
    ("ff02::1", False, False),
    ("192.0.2.1", False, True),  # documentation
    ("::127.0.0.1", False, True),  # IPv4-compatible
    ("64:ff9b::a9fe:a9fe", False, False),  # NAT64 of 169.254.169.254
    ("64:ff9b::808:808", True, True),  # NAT64 of 8.8.8.8
    ("2002:a9fe:a9fe::1", False, False),  # 6to4 of 169.254.169.254
    ("fe80::1%eth0", False, False),
    ("fd00:ec2::254%eth0", False, False),
]


@pytest.mark.parametrize(("address", "public_only", "private_too"), VERDICTS)
def test_policy_allows_public_addresses_and_private_ones_only_when_asked(
    address: str, public_only: bool, private_too: bool
) -> None:
    ip = ipaddress.ip_address(address)
    assert PUBLIC_ONLY.allows(ip) is public_only
    assert PRIVATE_TOO.allows(ip) is private_too
    assert (PUBLIC_ONLY.reason(ip) is None) is public_only
    assert (PRIVATE_TOO.reason(ip) is None) is private_too


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("100.64.0.1", "not a public address"),
        ("169.254.169.254", "link-local"),
        ("100.100.100.200", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_reason_names_the_kind_of_address(address: str, words: str) -> None:
    reason = PUBLIC_ONLY.reason(ipaddress.ip_address(address))
    assert reason is not None and words in reason


def test_an_ipv6_form_is_judged_as_the_ipv4_address_it_carries() -> None:
    reason = PUBLIC_ONLY.reason(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert reason == "a loopback address (it carries the IPv4 address 127.0.0.1)"


def test_refusal_message_names_the_address_and_the_host_it_came_from() -> None:
    loopback = ipaddress.ip_address("127.0.0.1")
    assert (
        str(OutboundRefused("127.0.0.1", loopback, "a loopback address")) == "refused: 127.0.0.1 is a loopback address"
    )
    named = OutboundRefused("localhost", loopback, "a loopback address")
    assert str(named) == "refused: localhost (127.0.0.1) is a loopback address"
    assert (named.host, named.address, named.reason) == ("localhost", loopback, "a loopback address")


def test_refusal_is_found_behind_the_errors_that_wrap_it() -> None:
    refused = OutboundRefused("localhost", ipaddress.ip_address("127.0.0.1"), "a loopback address")
    try:
        try:
            raise refused
        except OutboundRefused as exc:
            raise ConnectionError("wrapped") from exc
    except ConnectionError as wrapper:
        assert refusal(wrapper) is refused
    assert refusal(ConnectionError("plain")) is None
