import SystemPackage

/// A sync request that has not completed yet.
struct PendingSync {
    var id: UInt64
    var descriptor: FileDescriptor
    var mode: SyncMode
    var continuation: UnsafeContinuation<Void, any Error>
}

/// First-in first-out storage for requests waiting for a free slot (backpressure).
///
/// Removal by id (cancellation) leaves a hole that ``popFirst()`` skips; the storage is compacted
/// as the head advances, so steady state allocates nothing.
struct RequestQueue {
    private var storage: [PendingSync?] = []
    private var head = 0
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    mutating func append(_ request: PendingSync) {
        storage.append(request)
        count += 1
    }

    mutating func popFirst() -> PendingSync? {
        while head < storage.count {
            let request = storage[head]
            storage[head] = nil
            head += 1
            if let request {
                count -= 1
                compact()
                return request
            }
        }
        compact()
        return nil
    }

    /// Removes the request with `id`, if it is still waiting.
    mutating func remove(id: UInt64) -> PendingSync? {
        for index in head..<storage.count where storage[index]?.id == id {
            let request = storage[index]
            storage[index] = nil
            count -= 1
            compact()
            return request
        }
        return nil
    }

    /// Puts requests back at the front, in their order (a submission the system refused with EAGAIN).
    mutating func prepend(_ requests: [PendingSync]) {
        storage.replaceSubrange(head..<head, with: requests.map { Optional($0) })
        count += requests.count
    }

    /// Removes and returns every waiting request.
    mutating func removeAll() -> [PendingSync] {
        var all: [PendingSync] = []
        while let request = popFirst() { all.append(request) }
        return all
    }

    private mutating func compact() {
        if count == 0 {
            storage.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 64 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
    }
}
