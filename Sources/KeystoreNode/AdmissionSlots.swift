/// Inbound peer connections that have not completed TLS and a valid hello yet, bounded per
/// source address and in total, so that idle or slow connections from one address cannot take
/// every slot and keep the cluster's own nodes out (issue 11 item 2).
///
/// When a newcomer would exceed a bound it is not refused: the oldest pending connection of its
/// own address (over the per-address bound), or of the address holding the most slots (over the
/// total) is dropped instead. A flood from one address then only ever displaces itself, and
/// a genuine peer's handshake, which completes in milliseconds, keeps its slot.
struct AdmissionSlots<ID: Hashable> {
    let perSource: Int
    let total: Int
    private var bySource: [String: [ID]] = [:]
    private(set) var count = 0

    init(perSource: Int, total: Int) {
        self.perSource = max(1, perSource)
        self.total = max(self.perSource, total)
    }

    /// Records a new pending connection; returns the one to close to make room, if any.
    mutating func arrive(_ id: ID, from source: String) -> ID? {
        var evicted: ID?
        if let mine = bySource[source], mine.count >= perSource {
            evicted = mine.first
        } else if count >= total, let crowded = bySource.max(by: { ($0.value.count, $1.key) < ($1.value.count, $0.key) }) {
            evicted = crowded.value.first
        }
        if let evicted { leave(evicted) }
        bySource[source, default: []].append(id)
        count += 1
        return evicted
    }

    /// The connection was admitted or closed (no-op when it is not pending).
    mutating func leave(_ id: ID) {
        for (source, ids) in bySource {
            guard let index = ids.firstIndex(of: id) else { continue }
            if ids.count == 1 { bySource[source] = nil } else { bySource[source]?.remove(at: index) }
            count -= 1
            return
        }
    }

    func pending(from source: String) -> Int { bySource[source]?.count ?? 0 }
}
