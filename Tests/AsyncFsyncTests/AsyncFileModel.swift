import Testing

@testable import AsyncFsync

/// ``AsyncFile`` as a model: its machine (``AsyncFileState``, the real code) driven the way
/// `AsyncFile.swift` drives it, with every operation, `close()` call and the handle's `deinit` as
/// an actor whose next step may come in any order.
///
/// An operation asks for admission, then (admitted) uses the descriptor, then ends, which may hand
/// the close to a waiting `close()` caller. A `close()` call starts (told to close now, to wait, or
/// that the descriptor is closed), is resumed with the order to close or with the result, and the
/// caller told to close closes the descriptor in a step of its own. `deinit` can happen only when no
/// task holds the handle (no operation running, no `close()` in progress), and then nothing else
/// can start.
///
/// Invariants: every operation ends exactly once; the descriptor is closed at most once, and only
/// when no admitted operation is running (also while it is being closed, nothing uses it); nothing
/// is admitted after a `close()` began; every `close()` returns exactly once, and only after the
/// descriptor is closed; no stuck state: at the end every operation and `close()` has returned and
/// the descriptor is closed exactly once.
struct AsyncFileModel: CheckedModel {
    typealias Machine = AsyncFileState<Int>

    enum Operation: Hashable {
        case notStarted
        /// Admitted: it uses the descriptor.
        case running
        case ended(admitted: Bool)
    }

    enum Closer: Hashable {
        case notCalled
        case waiting
        /// Told to close: its task closes the descriptor next.
        case closing
        case returned
    }

    enum Event: CustomStringConvertible {
        case operationStarts(Int)
        case operationEnds(Int)
        case closeCalled(Int)
        case closerCloses(Int)
        case deinitialized

        var description: String {
            switch self {
            case .operationStarts(let o): "op\(o) asks for admission"
            case .operationEnds(let o): "op\(o) ends"
            case .closeCalled(let c): "close() #\(c) called"
            case .closerCloses(let c): "close() #\(c) closes the descriptor"
            case .deinitialized: "deinit"
            }
        }
    }

    var machine = Machine()
    var operations: [Operation]
    var closers: [Closer]
    /// Times the descriptor was closed (by a `close()` caller or by `deinit`).
    var closes = 0
    /// A `close()` call has begun (nothing may be admitted after this).
    var closeBegan = false
    var gone = false

    init(operations: Int, closers: Int) {
        self.operations = Array(repeating: .notStarted, count: operations)
        self.closers = Array(repeating: .notCalled, count: closers)
    }

    /// No task holds the handle: deinit may run.
    private var unheld: Bool {
        !operations.contains(.running) && !closers.contains(.waiting) && !closers.contains(.closing)
    }

    func events() -> [Event] {
        guard !gone else { return [] }
        var events: [Event] = []
        for o in operations.indices {
            switch operations[o] {
            case .notStarted: events.append(.operationStarts(o))
            case .running: events.append(.operationEnds(o))
            case .ended: break
            }
        }
        for c in closers.indices {
            switch closers[c] {
            case .notCalled: events.append(.closeCalled(c))
            case .closing: events.append(.closerCloses(c))
            case .waiting, .returned: break
            }
        }
        if unheld { events.append(.deinitialized) }
        return events
    }

    mutating func apply(_ event: Event, violations: inout [String]) {
        switch event {
        case .operationStarts(let o):
            if machine.admit() {
                if closeBegan { violations.append("op\(o) admitted after close() began") }
                if closes > 0 { violations.append("op\(o) admitted after the descriptor was closed") }
                operations[o] = .running
            } else {
                operations[o] = .ended(admitted: false)
            }
        case .operationEnds(let o):
            operations[o] = .ended(admitted: true)
            if let closer = machine.finish() {
                resume(closer, toClose: true, violations: &violations)
            }
        case .closeCalled(let c):
            closeBegan = true
            switch machine.close(waiter: c) {
            case .closeNow: closers[c] = .closing
            case .wait: closers[c] = .waiting
            case .alreadyClosed:
                if closes != 1 { violations.append("close() #\(c) told the descriptor is closed, closed \(closes) times") }
                closers[c] = .returned
            }
        case .closerCloses(let c):
            closeDescriptor(by: "close() #\(c)", violations: &violations)
            closers[c] = .returned
            for waiter in machine.descriptorClosed() {
                resume(waiter, toClose: false, violations: &violations)
            }
        case .deinitialized:
            gone = true
            if machine.deinitialize() {
                closeDescriptor(by: "deinit", violations: &violations)
            }
        }
    }

    private mutating func closeDescriptor(by whom: String, violations: inout [String]) {
        closes += 1
        if closes > 1 { violations.append("\(whom) closed the descriptor a second time") }
        for o in operations.indices where operations[o] == .running {
            violations.append("\(whom) closed the descriptor while op\(o) uses it")
        }
    }

    private mutating func resume(_ c: Int, toClose: Bool, violations: inout [String]) {
        guard closers[c] == .waiting else {
            violations.append("close() #\(c) resumed while \(closers[c])")
            return
        }
        if toClose {
            closers[c] = .closing
        } else {
            if closes != 1 { violations.append("close() #\(c) returned with the descriptor closed \(closes) times") }
            closers[c] = .returned
        }
    }

    func check(violations: inout [String]) {
        let running = operations.filter { $0 == .running }.count
        if running != machine.inFlight {
            violations.append("\(running) operations run but the machine counts \(machine.inFlight)")
        }
        if closers.filter({ $0 == .closing }).count > 1 { violations.append("two close() callers told to close") }
        if closes > 0, running > 0 { violations.append("the descriptor is closed while operations run") }
    }

    func checkFinal(violations: inout [String]) {
        for o in operations.indices {
            if case .ended = operations[o] { continue }
            if gone, operations[o] == .notStarted { continue }  // its task never had the handle
            violations.append("nothing can happen, yet op\(o) is \(operations[o])")
        }
        for c in closers.indices where closers[c] != .returned && closers[c] != .notCalled {
            violations.append("nothing can happen, yet close() #\(c) is \(closers[c]) (stuck)")
        }
        if closes != 1 { violations.append("at the end the descriptor was closed \(closes) times") }
        if machine.lifecycle != .closed { violations.append("at the end the machine is \(machine.lifecycle)") }
    }
}

extension AsyncFsyncTests.ModelChecks {
    @Test("AsyncFile: every order of 0–3 operations, 1–3 close() calls and deinit (admission, in flight, close waits, closed once)")
    func asyncFile() {
        var total = 0
        var configurations = 0
        for operations in 0...3 {
            for closers in 0...3 {
                let result = modelCheck(AsyncFileModel(operations: operations, closers: closers))
                total += result.states
                configurations += 1
                #expect(!result.truncated, "\(operations) operations, \(closers) closers: the bound was not reached")
                #expect(result.violations.isEmpty,
                        Comment(rawValue: "\(operations) operations, \(closers) closers:\n" + result.violations.joined(separator: "\n")))
            }
        }
        print("model check, AsyncFile: \(total) states in \(configurations) configurations")
    }
}
