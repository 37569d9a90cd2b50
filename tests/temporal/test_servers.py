"""The dev server Nudge starts itself: its failures say what to do; it carries Nudge's search
attributes."""

from __future__ import annotations

import socket

import pytest
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from temporal import search_attributes
from temporal.servers import DevServer, DevServerOptions, PortInUse, ServerError, dev_server


async def registered(client: Client) -> dict[str, int]:
    answer = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return dict(answer.custom_attributes)


async def test_the_dev_server_knows_nudges_search_attributes(dev_server: DevServer) -> None:
    found = await registered(dev_server.client)
    for key in search_attributes.ALL:
        assert found.get(key.name) == int(key.indexed_value_type), key.name


def test_the_cli_names_match_the_keys() -> None:
    assert search_attributes.by_name() == {
        "NudgeCampaign": "Keyword",
        "NudgeUser": "Keyword",
        "NudgeStep": "Keyword",
        "NudgeCampaignVersion": "Int",
    }


async def test_a_port_in_use_is_named_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse) as caught:
            async with dev_server(DevServerOptions(port=port)):
                pass
    assert (caught.value.port, caught.value.what) == (port, "Temporal")
    assert f"port {port} (Temporal) is in use" in str(caught.value)


async def test_a_server_that_dies_while_starting_shows_what_it_said() -> None:
    with pytest.raises(ServerError) as caught:
        async with dev_server(DevServerOptions(dynamic_config=("not a key=value pair",))):
            pass
    message = str(caught.value)
    assert "exited" in message and "while starting" in message
    assert "printed nothing" not in message  # the server's own complaint is shown
