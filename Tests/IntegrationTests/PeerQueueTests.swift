import Foundation
import KeystoreClient
import XCTest

/// Issue 11 item 7: a full-state answer that has to wait for a connection (the requester is a
/// 0.1.0 node, which takes answers only over the answering node's own dial, and that dial does
/// not get through at first) must arrive whole once the connection is up: it is streamed over
/// the connection, not queued in front of a dial (the old queue held 256 frames and dropped the
/// rest, and dropped everything when the dial failed).
final class PeerQueueTests: ClusterTestCase {
    /// A 0.1.0 node3 played by Python: it dials node1 with node3's certificate, sends a 0.1.0
    /// hello and a state request, and only `delay` seconds later starts listening on node3's
    /// peer port, where it records the frames node1 sends once its dial gets through. It prints
    /// node1's connections (frames, state chunks, key versions in them, how the answer ended).
    private static let oldNode = #"""
import json, socket, ssl, struct, sys, threading, time

node1_port, node3_port, certs, cluster = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
delay, timeout = float(sys.argv[5]), float(sys.argv[6])

def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b

def frame(kind, payload):
    body = bytes([1, kind]) + payload
    return struct.pack(">I", len(body)) + body

stamp = struct.pack(">QI", int(time.time() * 1000), 0)
hello = frame(1, string(cluster) + string("node3") + struct.pack(">Q", 0x5EC00002)
              + string("127.0.0.1:%d" % node3_port) + string("0.1.0") + stamp)
sync_request = frame(6, stamp)

client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client.minimum_version = ssl.TLSVersion.TLSv1_3
client.load_verify_locations(certs + "/ca.pem")
client.load_cert_chain(certs + "/node3.pem", certs + "/node3.key")
on_dialer = [0]
finished = threading.Event()
asked = threading.Event()

def dial():
    # Like a node: if its connection drops before the answer is complete, it dials and asks again.
    while not finished.is_set():
        try:
            dialer = client.wrap_socket(socket.create_connection(("127.0.0.1", node1_port), timeout=30), server_hostname="node1")
            dialer.sendall(hello + sync_request)
            asked.set()
            dialer.settimeout(0.5)
            while not finished.is_set():
                try:
                    data = dialer.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                on_dialer[0] += len(data)
        except Exception:
            pass
        time.sleep(0.5)
threading.Thread(target=dial, daemon=True).start()
asked.wait(60)

time.sleep(delay)  # node1's dials to node3 are refused meanwhile

server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server.minimum_version = ssl.TLSVersion.TLSv1_3
server.load_cert_chain(certs + "/node3.pem", certs + "/node3.key")
server.load_verify_locations(certs + "/ca.pem")
server.verify_mode = ssl.CERT_REQUIRED
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", node3_port))
listener.listen(16)
deadline = time.time() + timeout
connections = []
lock = threading.Lock()

def serve(conn):
    # node2 dials node3 too: every connection gets its own thread, and only node1's count.
    info = {"from": None, "frames": 0, "syncFrames": 0, "syncVersions": 0, "syncDone": None}
    try:
        conn.settimeout(max(0.1, deadline - time.time()))
        tls = server.wrap_socket(conn, server_side=True)
        buffer = b""
        while not finished.is_set() and time.time() < deadline:
            data = tls.recv(1 << 16)
            if not data:
                break
            buffer += data
            while len(buffer) >= 4:
                (length,) = struct.unpack(">I", buffer[:4])
                if len(buffer) < 4 + length:
                    break
                body, buffer = buffer[4:4 + length], buffer[4 + length:]
                info["frames"] += 1
                if body[1] == 1:  # hello: cluster name, then node name
                    (skip,) = struct.unpack(">H", body[2:4])
                    (size,) = struct.unpack(">H", body[4 + skip:6 + skip])
                    info["from"] = body[6 + skip:6 + skip + size].decode()
                elif body[1] == 5 and body[14] == 3:  # delta, purpose sync
                    info["syncFrames"] += 1
                    info["syncVersions"] += struct.unpack(">I", body[15:19])[0]
                elif body[1] == 7 and info["from"] == "node1":  # syncDone
                    info["syncDone"] = body[14] == 1
                    finished.set()
    except Exception:
        pass
    with lock:
        connections.append(info)

threads = []
while not finished.is_set() and time.time() < deadline:
    listener.settimeout(0.2)
    try:
        conn, _ = listener.accept()
    except Exception:
        continue
    thread = threading.Thread(target=serve, args=(conn,), daemon=True)
    thread.start()
    threads.append(thread)
for thread in threads:
    thread.join(max(0.1, deadline - time.time()))
with lock:
    connections = [c for c in connections if c["from"] == "node1"]
print(json.dumps({"connections": connections, "bytesOnTheDialersConnection": on_dialer[0]}))
"""#

    func testAFullStateAnswerLargerThanTheOldQueueArrivesWholeOverADialThatGetsThroughLate() throws {
        let keyCount = 300
        let domains: [String: Any] = ["first.com": ["keys": (0..<keyCount).map { ["name": "k\($0)", "type": "ram"] }]]
        let cluster = try makeCluster(nodes: ["node1", "node2", "node3"], joinTimeoutMillis: 1000, domains: domains)
        // 4 KiB chunks: one 2 KiB key version per frame, 300 frames (the old queue held 256).
        let small = ["KEYSTORE_PEER_CHUNK_BYTES": "4096"]
        for node in ["node1", "node2"] { try cluster.start(node, environment: small, waitForSocket: false) }
        for node in ["node1", "node2"] { cluster.waitReady(node) }
        cluster.waitForAgreement("first.com", "k0")
        // The stand-in answers no SWIM probe: let node1 settle on "dead" before it asks, since a
        // state answer to a member that dies meanwhile is dropped.
        waitUntil("node1 has declared the silent node3 dead") {
            (try? cluster.client("node1").clusterStatus().members.first { $0.node == "node3" }?.state) == .dead
        }
        let script = cluster.scratch.file("old-node.py")
        try Self.oldNode.write(toFile: script, atomically: false, encoding: .utf8)
        // `timeout` bounds the whole exchange whatever node1 does.
        let result = try runCommand("/usr/bin/timeout", ["120", "/usr/bin/python3", script, String(cluster.ports["node1"]!),
                                                         String(cluster.ports["node3"]!), try SharedCertificates.directory(),
                                                         "test-cluster", "2", "60"])
        XCTAssertEqual(result.status, 0, result.output)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any], result.output)
        let connections = try XCTUnwrap(json["connections"] as? [[String: Any]])
        let answered = connections.first { $0["syncDone"] as? Bool == true }
        XCTAssertNotNil(answered, "node1 never finished its answer: \(connections)")
        XCTAssertEqual(answered?["syncVersions"] as? Int, keyCount, "the answer lost key versions: \(connections)")
        XCTAssertGreaterThan(answered?["syncFrames"] as? Int ?? 0, 256)
        XCTAssertEqual(json["bytesOnTheDialersConnection"] as? Int, 0, "a 0.1.0 dialer must get nothing on its own connection")
        print("queue: \(answered?["syncFrames"] ?? 0) state frames with \(answered?["syncVersions"] ?? 0) key versions arrived over \(connections.count) connection(s)")
    }
}
