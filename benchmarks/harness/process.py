"""The parent's side of a worker process: JSON requests on its stdin, `MARK`-prefixed JSON
replies on its stdout, as `worker.run_child` and the pretraining benchmark's workers write them."""

import json
import subprocess

MARK = "@@bench "


class ChildProcess:
    """A benchmark worker process: JSON requests on its stdin, `MARK`-prefixed replies on stdout,
    stderr to `log_path`; `error` holds the log's tail once it has died."""

    quit_timeout = 60

    def __init__(self, cmd, env, log_path):
        self.log_path = log_path
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self.error = None

    def receive(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        self.proc.wait()
        self.log.flush()
        with open(self.log_path) as f:
            tail = "\n".join(f.read().strip().splitlines()[-12:])
        self.error = f"worker exited ({self.proc.returncode}):\n{tail}"
        return None

    def request(self, msg):
        if self.error:
            return None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self.receive()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=self.quit_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
