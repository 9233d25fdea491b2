#!/usr/bin/env python3
"""Summarises the first fan-out in a `netsim/sample.py` file: its window (from the origin's
first second over 1 MB/s to the seeders' last second over 1 MB/s), the origin's egress, the
seeders' mean uplink and downlink use (of a 40 Mbit/s = 5 MB/s link), when a seeder first
uploaded over 1 MB/s, the nodes' CPU, tbf drops, and the share of seeder-seconds under
0.5 MB/s.  usage: summarize.py OUTDIR/samples.jsonl [FILE_MIB (default 256)]"""
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
file_bytes = int(sys.argv[2] if len(sys.argv) > 2 else 256) << 20
rows = [r for r in rows if 'links' in r and 'qdisc' in r]
n = len(rows[0]['links'])
# fan-out window: origin egress > 1 MB/s ... until peers' downloads stop before verify phase
def up(r,i): return r['links'][f'hv{i}'][0]
def down(r,i): return r['links'][f'hv{i}'][1]
start = next(k for k in range(1,len(rows)) if up(rows[k],0)-up(rows[k-1],0) > 1e6)
# end: last sample where the peers' total download > 1 MB/s
end = max(k for k in range(1,len(rows)) if sum(down(rows[k],i)-down(rows[k-1],i) for i in range(1,n)) > 1e6)
a, b = rows[start-1], rows[end]
dt = b['t']-a['t']
print(f"fan-out window {a['t']:.0f}-{b['t']:.0f} s = {dt:.0f} s; load {a['load']:.1f}-{b['load']:.1f}")
print(f"origin egress {(up(b,0)-up(a,0))/file_bytes:.2f} copies, {(up(b,0)-up(a,0))/dt/1e6:.2f} MB/s")
pu = [(up(b,i)-up(a,i))/dt/1e6 for i in range(1,n)]
pd = [(down(b,i)-down(a,i))/dt/1e6 for i in range(1,n)]
print(f"peer uplink mean {sum(pu)/len(pu):.2f} MB/s ({sum(pu)/len(pu)/5*100:.0f}% of 5 MB/s), min {min(pu):.2f} max {max(pu):.2f}")
print(f"peer downlink mean {sum(pd)/len(pd):.2f} MB/s ({sum(pd)/len(pd)/5*100:.0f}%)")
# first time any peer uploads > 1 MB/s over 1 s
fp = next(rows[k]['t'] for k in range(start,end+1) if any(up(rows[k],i)-up(rows[k-1],i) > 1e6 for i in range(1,n)))
print(f"first peer upload >1 MB/s at +{fp-a['t']:.0f} s")
cpu = sum(b['cpu'].get(p,0)-a['cpu'].get(p,0) for p in b['cpu'])/100
print(f"hubmesh CPU {cpu:.0f} s over {dt:.0f} s = {cpu/dt*100:.0f}% of one core (2 cores)")
drops = sum(b['qdisc'][f'hv{i}'][0]-a['qdisc'][f'hv{i}'][0] for i in range(n))
print(f"tbf drops (download side, all links) {drops}")
# per-second peer upload utilisation distribution
idle = 0; tot = 0
for k in range(start, end+1):
    for i in range(1,n):
        r = (up(rows[k],i)-up(rows[k-1],i))/(rows[k]['t']-rows[k-1]['t'])/1e6
        tot += 1; idle += r < 0.5
print(f"peer-seconds with uplink < 0.5 MB/s: {idle}/{tot} = {idle/tot*100:.0f}%")
