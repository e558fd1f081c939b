# Sourced by the single-node launch scripts (and launch/multinode.sh without ssh).
#
# run_deepspeed ARGS...: `deepspeed ARGS...`, so that a SIGTERM or SIGINT sent to the calling script
# reaches every rank. DeepSpeed's single-node runner does not forward SIGTERM: killing the `deepspeed`
# process leaves its ranks training on, orphaned, and nothing is saved. Here the launcher runs in a
# process group of its own; a signal to the script is passed to that whole group (each rank saves a
# checkpoint and exits, see megatron_zh/training/distributed/signals.py), and the function returns only once every
# process of the group is gone, so a scheduler that waits for the script also waits for the save.
# Its status is the launcher's (128 + the signal number when it was signalled).
run_deepspeed() {
    local launcher="${DEEPSPEED:-deepspeed}"
    set -m  # background jobs get their own process group, whose id is the job's pid
    "$launcher" "$@" &
    local group=$!
    set +m
    # shellcheck disable=SC2064  # the group id is fixed now
    trap "kill -TERM -- -$group 2>/dev/null" TERM
    # shellcheck disable=SC2064
    trap "kill -INT -- -$group 2>/dev/null" INT
    local status=0
    wait "$group" || status=$?
    while kill -0 -- "-$group" 2>/dev/null; do  # a trapped signal ends `wait` early: the ranks are saving
        sleep 1
    done
    wait "$group" 2>/dev/null || status=$?
    trap - TERM INT
    return "$status"
}
