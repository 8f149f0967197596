"""Full chain over loopback, plain relay vs TLS relay (--tls-cert), same binaries:
bulk echo throughput and 64-byte RTT through origin + dest + relay. Prints, asserts nothing."""
import socket, os, sys, time, threading, subprocess, re
B=os.environ.get("SOCKRELAY_BIN", "target/release/")
# Usage: cargo build --release; python3 benches/tls_vs_plain.py
# (makes a throwaway CA in a temp dir; loopback only; bounded: 2 rounds).
import tempfile
d=tempfile.mkdtemp(prefix="sockrelay-tlsbench-")
def echo_server(path):
    if os.path.exists(path): os.unlink(path)
    s=socket.socket(socket.AF_UNIX); s.bind(path); s.listen(8)
    def serve(c):
        while True:
            b=c.recv(1<<20)
            if not b: break
            c.sendall(b)
        c.close()
    def acc():
        while True:
            c,_=s.accept(); threading.Thread(target=serve,args=(c,),daemon=True).start()
    threading.Thread(target=acc,daemon=True).start()
def start_relay(tls):
    args=[B+"sockrelay-relay","-p","0","-b","127.0.0.1"]
    if tls: args+=["--tls-cert",d+"/relay.pem","--tls-key",d+"/relay.key"]
    log=open(d+"/relay.log","w+")
    p=subprocess.Popen(args,stderr=log,stdout=subprocess.DEVNULL)
    for _ in range(200):
        time.sleep(0.05); t=open(d+"/relay.log").read()
        m=re.search(r"listening on 127.0.0.1:(\d+)",t)
        if m: return p,int(m.group(1))
    raise SystemExit("relay")
def run(tls, mib, rtts):
    relay,port=start_relay(tls)
    url=("wss://localhost:%d" if tls else "ws://127.0.0.1:%d")%port
    extra=["--ca-file",d+"/ca.pem"] if tls else []
    env=dict(os.environ); env["SOCKRELAY_TOKEN"]="bench-token-0123456789"
    o=subprocess.Popen([B+"sockrelay-origin"]+extra+[url,d+"/echo.sock"],stdout=subprocess.PIPE,stderr=open(d+"/o.log","w"),env=env,text=True)
    line=o.stdout.readline(); sid=line.split("=")[1].split(";")[0]
    ds=d+"/dest.sock"
    dp=subprocess.Popen([B+"sockrelay-dest"]+extra+[url,sid,ds],stderr=open(d+"/d.log","w"),env=env)
    for _ in range(200):
        time.sleep(0.05)
        if "end-to-end encryption established" in open(d+"/d.log").read(): break
    c=socket.socket(socket.AF_UNIX); c.connect(ds)
    data=os.urandom(1<<20)
    total=mib<<20
    def rd():
        got=0
        while got<total:
            b=c.recv(1<<20)
            if not b: break
            got+=len(b)
        res.append(got)
    res=[]
    procs.extend([dp,o,relay])
    t0=time.time(); th=threading.Thread(target=rd); th.start()
    for _ in range(mib): c.sendall(data)
    th.join(); dt=time.time()-t0
    # RTT 64 bytes
    lat=[]
    small=b"x"*64
    for _ in range(rtts):
        t=time.perf_counter(); c.sendall(small); g=0
        while g<64: g+=len(c.recv(64))
        lat.append(time.perf_counter()-t)
    lat.sort()
    c.close()
    for p in (dp,o,relay): p.terminate()
    for p in (dp,o,relay): p.wait()
    return res[0]/dt/1e6, lat[len(lat)//2]*1e6, lat[int(len(lat)*0.99)]*1e6
def pki():
    run=lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)
    run("openssl","req","-x509","-newkey","ec","-pkeyopt","ec_paramgen_curve:P-256","-nodes","-keyout","ca.key","-out","ca.pem","-days","3","-subj","/CN=benchca","-addext","basicConstraints=critical,CA:TRUE","-addext","keyUsage=critical,keyCertSign")
    run("openssl","req","-newkey","ec","-pkeyopt","ec_paramgen_curve:P-256","-nodes","-keyout","relay.key","-out","relay.csr","-subj","/CN=localhost")
    open(d+"/ext","w").write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("openssl","x509","-req","-in","relay.csr","-CA","ca.pem","-CAkey","ca.key","-CAcreateserial","-out","relay.pem","-days","3","-extfile","ext")
pki()
procs=[]
import atexit
import shutil
atexit.register(lambda: shutil.rmtree(d, ignore_errors=True))
atexit.register(lambda: [p.kill() for p in procs if p.poll() is None])
echo_server(d+"/echo.sock")
for rnd in range(2):
    for tls in (False,True):
        mbps,p50,p99=run(tls,256,2000)
        print("%s round %d: bulk %.0f MB/s (256 MiB echoed), 64-byte RTT p50 %.0f us p99 %.0f us"%("TLS  " if tls else "plain",rnd,mbps,p50,p99),flush=True)
