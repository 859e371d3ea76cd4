"""Endpoint specs for `cnnf policy explain`."""

from __future__ import annotations

import pytest

from cnnf.model import ContainerIdentity, Endpoint, HostIdentity
from cnnf.policy.spec import EndpointSpecError, parse_endpoint


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("image=shop/api:2.1,ns=prod,host=node-1,name=api-1,label=app=api,cluster=c1",
         Endpoint(container=ContainerIdentity(
             image="shop/api:2.1", name="api-1", labels=(("app", "api"),), namespace="prod",
             cluster="c1", host="node-1"))),
        ("image=shop/api, namespace=prod , addr=10.0.0.5",
         Endpoint(address="10.0.0.5",
                  container=ContainerIdentity(image="shop/api", namespace="prod"))),
        ("image=x,label=b=2,label=a=1,pod=p,id=abc",
         Endpoint(container=ContainerIdentity(image="x", labels=(("a", "1"), ("b", "2")),
                                              pod="p", id="abc"))),
        ("host=node-1", Endpoint(host=HostIdentity(name="node-1"))),
        ("host=node-1,label=zone=a,addr=192.168.1.10",
         Endpoint(address="192.168.1.10",
                  host=HostIdentity(name="node-1", labels=(("zone", "a"),),
                                    addresses=("192.168.1.10",)))),
        ("10.0.0.5", Endpoint(address="10.0.0.5")),
        ("fd00:0::5", Endpoint(address="fd00::5")),
        ("api.partner.example", Endpoint(domains=("api.partner.example",))),
        ("API.Partner.Example.", Endpoint(domains=("api.partner.example",))),
        ("addr=93.184.216.34,domain=api.partner.example",
         Endpoint(address="93.184.216.34", domains=("api.partner.example",))),
        ("domain=a.example,domain=b.example", Endpoint(domains=("a.example", "b.example"))),
    ],
)
def test_parse(spec: str, expected: Endpoint) -> None:
    assert parse_endpoint(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty endpoint spec"),
        ("image=x,colour=red", "unknown key 'colour' (known: image, ns, host"),
        ("image=x,ns", "'ns' is not key=value"),
        ("image=x,ns=", "ns= needs a value"),
        ("image=x,image=y", "image= is given twice"),
        ("ns=prod", "a container spec needs image=NAME[:TAG]"),
        ("image=x,addr=10.0.0.300", "'10.0.0.300' is not an IPv4 or IPv6 address"),
        ("host=n,addr=nope", "'nope' is not an IPv4 or IPv6 address"),
        ("image=x,label=novalue", "label 'novalue' is not key=value"),
        ("label=a=b", "label= needs image= (a container) or host= (a host)"),
        ("10.0.0.0/8", "is not an IPv4 or IPv6 address"),
        ("fd00::zz", "is not an IPv4 or IPv6 address"),
        ("10.0.0.300", "'10.0.0.300' is not an IPv4 or IPv6 address"),
        ("bad_name!", "'bad_name!' is not a DNS name"),
        ("*.example.com", "is a wildcard, not a DNS name"),
    ],
)
def test_errors(spec: str, message: str) -> None:
    with pytest.raises(EndpointSpecError) as info:
        parse_endpoint(spec)
    assert message in str(info.value)
