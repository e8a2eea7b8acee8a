"""The server's public face: every name in ``__all__`` resolves, old import paths still work."""

import coapdev.server as server


def test_every_public_name_resolves_to_its_submodule():
    assert set(server.__all__) == set(server._EXPORTS)
    for name in server.__all__:
        assert getattr(server, name) is not None, name


def test_names_moved_out_of_site_and_resources_are_the_same_objects():
    from coapdev.server import fastpath, gate, guarded, observe, resources, site

    assert resources.ServerState is site.ServerState is gate.ServerState is server.ServerState
    assert resources.GuardedResource is site.GuardedResource is guarded.GuardedResource
    assert resources.ObservableGuardedResource is observe.ObservableGuardedResource
    assert resources.bound_block1 is site.bound_block1 is server.bound_block1
    assert site.refusal_message is resources.refusal_message is server.refusal_message
    assert fastpath.FastPath.__module__ == "coapdev.server.fastpath.serve"
    assert fastpath.parse_request is fastpath.wire.parse_request
