"""Connects to NATS with the pod's projected service-account token, reading the token file again
at every connect and reconnect, and exchanges greetings on `<namespace>.greetings`.

    NATS_URL=nats://nats.nats.svc.cluster.local:4222 \
    NATS_TOKEN_FILE=/var/run/secrets/nats/token NATS_NAMESPACE=team-a \
    python client.py [--count N]
"""

import argparse
import asyncio
import os
import signal
import sys

import nats
from nats.errors import ConnectionClosedError

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
TOKEN_FILE = os.environ.get("NATS_TOKEN_FILE", "/var/run/secrets/nats/token")
SUBJECT = f"{os.environ['NATS_NAMESPACE']}.greetings"


def read_token() -> str:
    # nats-py calls this for every CONNECT it sends (first connect and each reconnect), so the
    # client always presents what the kubelet last wrote, never a copy kept from start-up.
    with open(TOKEN_FILE, encoding="utf-8") as f:
        return f.read().strip()


async def on_disconnected() -> None:
    print("disconnected")


async def on_reconnected() -> None:
    print("reconnected")


async def on_error(e: Exception) -> None:
    print(f"error: {e!r}")


async def open_client(stop: asyncio.Event, on_message):
    """A subscribed client and an event set when it closes for good; None if stopped first."""
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    connecting = asyncio.create_task(
        nats.connect(
            URL,
            token=read_token,  # a callable: evaluated at every connect
            name="token-file-example",
            max_reconnect_attempts=-1,  # never give up
            reconnect_time_wait=1,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            error_cb=on_error,
            closed_cb=on_closed,
        )
    )
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not connecting.done():  # stopped while still trying to connect
        connecting.cancel()
        return None
    nc = connecting.result()
    await nc.subscribe(SUBJECT, cb=on_message)
    return nc, closed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, help="stop after receiving this many messages")
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    received = 0

    async def on_message(msg) -> None:
        nonlocal received
        if stop.is_set():  # messages still arriving while the client drains
            return
        received += 1
        print(f"received {msg.subject}: {msg.data.decode()}")
        if args.count and received >= args.count:
            stop.set()

    first, sent = True, 0
    while not stop.is_set():
        opened = await open_client(stop, on_message)
        if opened is None:
            break
        nc, closed = opened
        print("connected" if first else "reconnected")
        first = False
        while not (stop.is_set() or closed.is_set()):
            sent += 1
            try:
                # While reconnecting, nats-py buffers the message and sends it afterwards.
                await nc.publish(SUBJECT, f"hello {sent} from python".encode())
            except ConnectionClosedError:
                break
            await asyncio.sleep(1)
        if stop.is_set():
            await (nc.drain() if nc.is_connected else nc.close())
        else:
            # nats-py 2.16 closes the client, instead of reconnecting, when the server ends the
            # session with "User Authentication Expired" (the user JWT reached its end): open a
            # new client, whose first CONNECT reads the token file again.
            print(f"closed: {nc.last_error!r}; connecting again")
    print("stopped")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    asyncio.run(main())
