public import NIOConcurrencyHelpers

/// A value shared between a test and the threads it starts (event loops, readability handlers,
/// helper threads): SwiftNIO's lock box, so tests do not each hand-write one.
public typealias LockedBox<Value> = NIOLockedValueBox<Value>
