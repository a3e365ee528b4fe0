#!/usr/bin/env bash
# launch.sh: run any jaxbench command on one host, as N local processes, or under SLURM.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: ./launch.sh [options] -- <jaxbench command> [flags]

Runs `jaxbench <command>` with a backend's environment preset, on one host, as several local
processes, or as one task of a SLURM job.

options:
  --backend=auto|cuda|rocm|cpu|tpu   environment preset (default auto: JAX picks, no preset)
  --local_processes=N                start N processes on this host, joined by jax.distributed on
                                     127.0.0.1; wait for all, fail (and stop the rest) if one fails
  --devices_per_process=M            with --local_processes: CPU host devices per process
                                     (cpu), or consecutive GPUs per process (cuda, rocm)
  --port=P                           coordinator port (default 12355, or $JAXBENCH_PORT)
  --dry_run                          print what would run, run nothing
  -h, --help                         this text

Under SLURM (srun inside sbatch, one task per host or per GPU), launch.sh takes the process
count from SLURM_NTASKS, the index from SLURM_PROCID and the coordinator from the first host of
SLURM_JOB_NODELIST, and passes them to `jaxbench train` as --coordinator_address,
--num_processes and --process_id.

Presets (applied only where you have not set the variable or flag yourself; run.json records the
environment a run saw):
  cuda  XLA_FLAGS += --xla_gpu_enable_latency_hiding_scheduler=true   (JAX-Toolbox's default:
        lets XLA overlap collectives with compute); JAX_PLATFORMS=cuda
  rocm  XLA_FLAGS += --xla_gpu_enable_latency_hiding_scheduler=true   (the same XLA GPU flag);
        JAX_PLATFORMS=rocm
  cpu   JAX_PLATFORMS=cpu
  tpu   JAX_PLATFORMS=tpu (no LIBTPU_INIT_ARGS: none whose effect we have measured)

examples:
  ./launch.sh -- train --config=configs/mpt.py:125m
  ./launch.sh --backend=cpu --local_processes=2 --devices_per_process=2 -- train --config=configs/mpt.py:nano
  srun --ntasks-per-node=1 ./launch.sh --backend=cuda -- train --config=configs/mpt.py:7b --config.mesh.fsdp=-1
EOF
}

die() {
  echo "launch.sh: bad input: $*" >&2
  exit 2
}

backend=auto
local_processes=0
devices_per_process=0
port="${JAXBENCH_PORT:-12355}"
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --backend=*) backend="${1#*=}" ;;
    --local_processes=*) local_processes="${1#*=}" ;;
    --devices_per_process=*) devices_per_process="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the jaxbench command goes after --); see --help" ;;
  esac
  shift
done
[[ $# -gt 0 ]] || die "no jaxbench command after --; see --help"
case "$backend" in auto | cuda | rocm | cpu | tpu) ;; *) die "--backend=$backend; allowed: auto, cuda, rocm, cpu, tpu" ;; esac
[[ "$local_processes" =~ ^[0-9]+$ ]] || die "--local_processes=$local_processes must be a number"
[[ "$devices_per_process" =~ ^[0-9]+$ ]] || die "--devices_per_process=$devices_per_process must be a number"
[[ "$port" =~ ^[0-9]+$ ]] || die "--port=$port must be a number"

# The jaxbench executable: the one beside this script's virtualenv, else on PATH, else the module.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${JAXBENCH:-}" ]]; then
  read -r -a jaxbench <<<"$JAXBENCH"
elif [[ -x "$here/.venv/bin/jaxbench" ]]; then
  jaxbench=("$here/.venv/bin/jaxbench")
elif command -v jaxbench >/dev/null; then
  jaxbench=(jaxbench)
else
  jaxbench=(python3 -m jaxbench)
fi

add_xla_flag() {  # add_xla_flag NAME=VALUE: unless XLA_FLAGS already sets NAME
  local name="${1%%=*}"
  if [[ " ${XLA_FLAGS:-} " != *" ${name}="* ]]; then
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$1"
  fi
}

case "$backend" in
  cuda | rocm)
    add_xla_flag --xla_gpu_enable_latency_hiding_scheduler=true
    export JAX_PLATFORMS="${JAX_PLATFORMS:-$backend}" ;;
  cpu | tpu) export JAX_PLATFORMS="${JAX_PLATFORMS:-$backend}" ;;
esac
export JAXBENCH_LAUNCH="backend=$backend local_processes=$local_processes"

show() {  # prints a command with the environment that matters, shell-quoted
  local var
  for var in JAX_PLATFORMS XLA_FLAGS CUDA_VISIBLE_DEVICES HIP_VISIBLE_DEVICES; do
    if [[ -n "${!var:-}" ]]; then printf '%s=%q ' "$var" "${!var}"; fi
  done
  printf '%q ' "$@"
  printf '\n'
}

command_name="$1"
multi_flags() {  # multi_flags ADDRESS N INDEX: the process flags, for the commands that take them
  if [[ "$command_name" == train ]]; then
    printf '%s\n' "--coordinator_address=$1" "--num_processes=$2" "--process_id=$3"
  fi
}

# --- SLURM: this process is one task of a job step -----------------------------------------------
if [[ "$local_processes" -eq 0 && -n "${SLURM_JOB_ID:-}" && "${SLURM_NTASKS:-1}" -gt 1 ]]; then
  [[ -n "${SLURM_PROCID:-}" ]] || die "SLURM_NTASKS=$SLURM_NTASKS but no SLURM_PROCID: start launch.sh with srun"
  nodelist="${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}"
  [[ -n "$nodelist" ]] || die "no SLURM_JOB_NODELIST to find the coordinator host in"
  command -v scontrol >/dev/null || die "scontrol not found: cannot expand SLURM_JOB_NODELIST=$nodelist"
  coordinator="$(scontrol show hostnames "$nodelist" | head -n 1)"
  mapfile -t extra < <(multi_flags "$coordinator:$port" "$SLURM_NTASKS" "$SLURM_PROCID")
  cmd=("${jaxbench[@]}" "$@" "${extra[@]}")
  if [[ "$dry_run" -eq 1 ]]; then show "${cmd[@]}"; exit 0; fi
  exec "${cmd[@]}"
fi

# --- one process ----------------------------------------------------------------------------------
if [[ "$local_processes" -le 1 ]]; then
  if [[ "$devices_per_process" -gt 0 && "$backend" == cpu ]]; then
    add_xla_flag "--xla_force_host_platform_device_count=$devices_per_process"
  fi
  cmd=("${jaxbench[@]}" "$@")
  if [[ "$dry_run" -eq 1 ]]; then show "${cmd[@]}"; exit 0; fi
  exec "${cmd[@]}"
fi

# --- N local processes on loopback ------------------------------------------------------------------
[[ "$command_name" == train ]] || die "--local_processes runs 'train' only, not '$command_name'"
pids=()
stop_all() {  # stop_all SIGNAL
  local pid
  for pid in "${pids[@]}"; do kill "-$1" "$pid" 2>/dev/null || true; done
}
# SIGTERM / SIGINT go to every process: they finish the step in flight, agree on it, save and
# exit 0 (jaxbench train's own handling); launch.sh then exits with their status.
trap 'stop_all TERM' TERM
trap 'stop_all INT' INT
for ((i = 0; i < local_processes; i++)); do
  mapfile -t extra < <(multi_flags "127.0.0.1:$port" "$local_processes" "$i")
  (
    if [[ "$devices_per_process" -gt 0 ]]; then
      first=$((i * devices_per_process))
      visible="$(seq -s, "$first" $((first + devices_per_process - 1)))"
      case "$backend" in
        cpu) add_xla_flag "--xla_force_host_platform_device_count=$devices_per_process" ;;
        cuda) export CUDA_VISIBLE_DEVICES="$visible" ;;
        rocm) export HIP_VISIBLE_DEVICES="$visible" ;;
      esac
    fi
    cmd=("${jaxbench[@]}" "$@" "${extra[@]}")
    if [[ "$dry_run" -eq 1 ]]; then show "${cmd[@]}"; exit 0; fi
    # A session of its own: a terminal's Ctrl-C reaches launch.sh only, which forwards it once
    # (a second SIGINT would abort a process instead of letting it save).
    if command -v setsid >/dev/null; then exec setsid "${cmd[@]}"; fi
    exec "${cmd[@]}"
  ) &
  pids+=("$!")
done

# Polls rather than blocking in `wait -n`, whose interruption by a trapped signal bash does not
# guarantee in every case: once in the test suite a Ctrl-C left both processes training for
# minutes. Bash runs traps between commands, so here within a second of the signal. A terminal's
# Ctrl-C also ends the `sleep` (hence `|| true`: its status is not ours).
status=0
running=("${pids[@]}")
while [[ "${#running[@]}" -gt 0 ]]; do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    code=0
    wait "$pid" || code=$?
    if [[ "$code" -ne 0 && "$status" -eq 0 ]]; then
      status=$code
      echo "launch.sh: a process exited with $code; stopping the others" >&2
      stop_all KILL
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  if [[ "${#running[@]}" -gt 0 ]]; then sleep 1 || true; fi
done
exit "$status"
