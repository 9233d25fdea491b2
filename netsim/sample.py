#!/usr/bin/env python3
"""Samples a running hub-netsim lab every second, from outside it (ADR 0016, "Where the time
went"): every node's link counters on the bridge side (`ip -s -j link`: hv{i} rx = what node i
sent, tx = what it received), the download-side tbf qdiscs (`tc -s -j qdisc`: drops,
overlimits, backlog), each hubmesh process's CPU ticks (/proc), the load average; and copies the
nodes' logs every 10 s (the lab deletes them after a successful run). One JSON line per second
in OUTDIR/samples.jsonl; `netsim/summarize.py` reads it.

    netsim/bench.py --only fanout & netsim/sample.py /tmp/probe $!

ROOTPID is any ancestor of the lab (the bench, or `hub-netsim run`); the lab's namespaces are
entered with nsenter (the same user owns them). Stops when ROOTPID has no descendants left."""
import json, os, subprocess, sys, time, glob, shutil
out, root = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
def children():
    kids = {}
    for p in glob.glob('/proc/[0-9]*/stat'):
        try:
            s = open(p).read()
        except OSError:
            continue
        pid = int(p.split('/')[2]); rest = s[s.rfind(')')+2:].split()
        kids.setdefault(int(rest[1]), []).append((pid, s[s.find('(')+1:s.rfind(')')], rest))
    return kids
def descendants(kids, pid):
    out = []
    for c in kids.get(pid, []):
        out.append(c); out += descendants(kids, c[0])
    return out
f = open(os.path.join(out, 'samples.jsonl'), 'w')
t0 = time.monotonic(); inner = None; n = 0
while True:
    kids = children()
    ds = descendants(kids, root)
    if not ds and n > 3:
        break
    hub = [(pid, [int(x) for x in rest[11:13]]) for pid, name, rest in ds if name == 'hubmesh']
    inners = [pid for pid, name, rest in ds if name == 'hub-netsim' and any(c[1]=='hubmesh' for c in kids.get(pid, []))]
    rec = {'t': round(time.monotonic()-t0, 2), 'load': os.getloadavg()[0],
           'cpu': {str(pid): sum(v) for pid, v in hub}}
    if inners:
        inner = inners[0]
        try:
            links = subprocess.run(['nsenter','-t',str(inner),'-U','-n','-m','--preserve-credentials','ip','-s','-j','link','show'],capture_output=True,text=True,timeout=5).stdout
            q = subprocess.run(['nsenter','-t',str(inner),'-U','-n','-m','--preserve-credentials','tc','-s','-j','qdisc','show'],capture_output=True,text=True,timeout=5).stdout
            rec['links'] = {l['ifname']: [l['stats64']['rx']['bytes'], l['stats64']['tx']['bytes']] for l in json.loads(links) if l['ifname'].startswith('hv')}
            rec['qdisc'] = {x['dev']: [x.get('drops',0), x.get('overlimits',0), x.get('backlog',0)] for x in json.loads(q) if x['dev'].startswith('hv')}
        except Exception as e:
            rec['err'] = str(e)
        if n % 10 == 0:
            for d in glob.glob('/dev/shm/hub-netsim-*') + glob.glob('/tmp/hub-netsim-*'):
                for lg in glob.glob(d + '/node*.log'):
                    try: shutil.copy(lg, out)
                    except OSError: pass
    f.write(json.dumps(rec) + '\n'); f.flush(); n += 1
    time.sleep(max(0, t0 + n - time.monotonic()))
