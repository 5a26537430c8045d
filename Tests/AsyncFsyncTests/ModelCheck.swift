import Foundation

/// A small explicit-state model checker: every order of events from a start state, up to the
/// bound the model itself sets (a finite set of requests and outcomes), with the invariants
/// checked after every step. States are kept in a set, so each is explored once.
///
/// A model is a plain value: its events are the moves any thread or the system could make next;
/// `apply` makes one on a copy and reports what broke.
protocol CheckedModel: Hashable {
    associatedtype Event: CustomStringConvertible
    /// Every event that may happen next.
    func events() -> [Event]
    /// Makes `event` happen; appends a message for each invariant the step broke.
    mutating func apply(_ event: Event, violations: inout [String])
    /// Invariants of the state itself (checked after every step).
    func check(violations: inout [String])
    /// Invariants of a state in which no event can happen any more.
    func checkFinal(violations: inout [String])
}

struct ModelCheckResult {
    var states = 0
    var transitions = 0
    /// The first violations found, each with the events that led to it.
    var violations: [String] = []
    var truncated = false
}

/// Explores every state reachable from `start` breadth-first (so a violation's trace is short),
/// stopping after `maxViolations` violations or `maxStates` states.
func modelCheck<M: CheckedModel>(_ start: M, maxStates: Int = 5_000_000, maxViolations: Int = 3) -> ModelCheckResult {
    var result = ModelCheckResult()
    var seen: Set<M> = [start]
    var states: [M] = [start]
    var parents: [(parent: Int, event: String)] = [(-1, "start")]
    var index = 0

    func trace(_ state: Int, then last: String) -> String {
        var steps: [String] = [last]
        var at = state
        while at > 0 {
            steps.append(parents[at].event)
            at = parents[at].parent
        }
        return steps.reversed().joined(separator: " → ")
    }

    var initial: [String] = []
    start.check(violations: &initial)
    for message in initial { result.violations.append("\(message) at the start") }

    while index < states.count, result.violations.count < maxViolations {
        let state = states[index]
        let events = state.events()
        if events.isEmpty {
            var messages: [String] = []
            state.checkFinal(violations: &messages)
            for message in messages { result.violations.append("\(message)\n    after: \(trace(index, then: "(nothing more can happen)"))") }
        }
        for event in events {
            var next = state
            var messages: [String] = []
            next.apply(event, violations: &messages)
            next.check(violations: &messages)
            result.transitions += 1
            if !messages.isEmpty {
                for message in messages { result.violations.append("\(message)\n    after: \(trace(index, then: event.description))") }
                if result.violations.count >= maxViolations { break }
                continue
            }
            if seen.insert(next).inserted {
                states.append(next)
                parents.append((index, event.description))
                if states.count >= maxStates {
                    result.truncated = true
                    result.states = states.count
                    return result
                }
            }
        }
        index += 1
    }
    result.states = states.count
    return result
}
