# Reads the output of `cargo test --no-fail-fast` (stdout and stderr together) and prints one
# line per test program (passed / failed / ignored, and the names of failed tests), then a
# line of totals. A program that started but printed no "test result" line (it crashed or was
# killed) is listed as such and counts as failed. Used by scripts/test.sh.
#
# Program names: "<crate> <source>" for unit and integration tests (from cargo's "Running"
# lines), "<crate> doc-tests" for doc-tests.

function flush_program() {
    if (program == "") return
    if (!seen_result) {
        printf "test.sh: %-52s CRASHED (no test result line: the program died)\n", program
        crashed++
    } else {
        line = sprintf("test.sh: %-52s %4d passed, %d failed", program, passed, failed)
        if (ignored) line = line sprintf(", %d ignored", ignored)
        if (failed) line = line "  <-- " failures
        print line
    }
    programs++
    if (failed || !seen_result) bad_programs++
    program = ""
}

/^ *Running / {
    flush_program()
    # "Running unittests src/lib.rs (target/debug/deps/webhookd_core-0123abcd)" or
    # "Running tests/it/main.rs (target/debug/deps/it-0123abcd)"
    src = $0
    sub(/^ *Running (unittests )?/, "", src)
    sub(/ \(.*$/, "", src)
    bin = $0
    sub(/^.*deps\//, "", bin)
    sub(/\)$/, "", bin)
    sub(/-[0-9a-f]+$/, "", bin)
    program = bin " " src
    passed = failed = ignored = seen_result = 0
    failures = ""
    next
}

/^ *Doc-tests / {
    flush_program()
    program = $2 " doc-tests"
    passed = failed = ignored = seen_result = 0
    failures = ""
    next
}

/^test .* \.\.\. FAILED$/ {
    name = $2
    failures = failures (failures == "" ? "" : " ") name
    next
}

/^test result: / {
    seen_result = 1
    for (i = 1; i <= NF; i++) {
        n = $i + 0
        if ($(i + 1) ~ /^passed/) passed = n
        if ($(i + 1) ~ /^failed/) failed = n
        if ($(i + 1) ~ /^ignored/) ignored = n
    }
    total_passed += passed
    total_failed += failed
    total_ignored += ignored
    next
}

END {
    flush_program()
    printf "test.sh: cargo test: %d programs, %d passed, %d failed, %d ignored; %d programs failed or crashed\n",
        programs, total_passed, total_failed, total_ignored, bad_programs
}
