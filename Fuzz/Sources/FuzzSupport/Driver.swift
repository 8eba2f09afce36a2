import CFuzzDriver

/// Runs libFuzzer on `testOneInput`. SwiftPM (tools >= 5.5, Linux) links executables with
/// `--defsym main=<Module>_main`, which would leave a harness without `main`; each harness
/// therefore defines `<Module>_main` and calls this. Where SwiftPM does not rename, libFuzzer's
/// own `main` runs and finds the same `LLVMFuzzerTestOneInput`.
public func runFuzzer(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                      _ testOneInput: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, testOneInput)
}
