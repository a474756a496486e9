"""A minimal RIS for tests: an MLLP listener that parses each HL7 v2 message with hl7apy,
appends it (ER7 text and control ID) to a JSON-lines file and answers an ACK (MSA-1 AA).

    python mllp_listener.py PORT OUT.jsonl [ACK_CODE]

ACK_CODE (default AA) lets a test play a RIS that refuses every message (AE or AR).

Runs until killed; one connection at a time is enough for the node's sender.
"""

from __future__ import annotations

import json
import socket
import sys
from datetime import UTC, datetime

from hl7apy.parser import parse_message

START, END = b"\x0b", b"\x1c\x0d"


def ack_for(text: str, code: str = "AA") -> tuple[str, str]:
    msg = parse_message(text, find_groups=False)
    control_id = msg.msh.msh_10.value
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    ack = (
        f"MSH|^~\\&|RIS||{msg.msh.msh_3.value}||{now}||ACK^{msg.msh.msh_9.msg_2.value}^ACK|A{control_id}|P|2.5\r"
        f"MSA|{code}|{control_id}" + ("" if code == "AA" else "|refused for the test")
    )
    return control_id, ack


def serve(port: int, out: str, code: str = "AA") -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(8)
    print("listening", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            buf = b""
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                while END in buf:
                    frame, buf = buf.split(END, 1)
                    text = frame[frame.find(START) + 1 :].decode("utf-8")
                    control_id, ack = ack_for(text, code)
                    with open(out, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"control_id": control_id, "er7": text}) + "\n")
                    conn.sendall(START + ack.encode() + END)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "AA")
