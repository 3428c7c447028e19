# Independent DC-OPF (MATPOWER convention) of a MATPOWER case with scipy: own parser,
# PTDF formulation in the dispatch only, SLSQP to machine precision.
import sys, re, json, numpy as np
from scipy.optimize import minimize
def matrix(text, name):
    m = re.search(r"mpc\.%s\s*=\s*\[(.*?)\];" % name, text, re.S)
    rows = []
    for line in m.group(1).split("\n"):
        line = line.split("%")[0].strip().rstrip(";")
        if line: rows.append([float(v) for v in line.split()])
    return np.array(rows)
path, levels = sys.argv[1], [float(s) for s in sys.argv[2].split(",")]
text = open(path).read()
base = float(re.search(r"mpc\.baseMVA\s*=\s*([0-9.]+)", text).group(1))
bus, gen, br, gc = (matrix(text, k) for k in ("bus", "gen", "branch", "gencost"))
ids = {int(b): i for i, b in enumerate(bus[:, 0])}
nb, nl = len(bus), len(br)
gen = gen[gen[:, 7] > 0]; gc = gc[: len(gen)]
ref = int(np.where(bus[:, 1] == 3)[0][0])
tap = np.where(br[:, 8] == 0, 1.0, br[:, 8]); b = 1.0 / (br[:, 3] * tap)
f = np.array([ids[int(v)] for v in br[:, 0]]); t = np.array([ids[int(v)] for v in br[:, 1]])
Bf = np.zeros((nl, nb)); Bf[np.arange(nl), f] = b; Bf[np.arange(nl), t] = -b
A = np.zeros((nl, nb)); A[np.arange(nl), f] = 1; A[np.arange(nl), t] = -1
B = A.T @ np.diag(b) @ A
keep = [i for i in range(nb) if i != ref]
X = np.zeros((nb, nb)); X[np.ix_(keep, keep)] = np.linalg.inv(B[np.ix_(keep, keep)])
ptdf = Bf @ X   # p.u. flow per p.u. injection
Cg = np.zeros((nb, len(gen))); Cg[[ids[int(v)] for v in gen[:, 0]], np.arange(len(gen))] = 1
rate = br[:, 5]; lim = rate > 0
assert (gc[:, 0] == 2).all() and (gc[:, 3] == 3).all()
c2, c1, c0 = gc[:, 4], gc[:, 5], gc[:, 6]
out = []
for s in levels:
    pd = s * bus[:, 2] + bus[:, 4]
    cost = lambda p: float(np.sum(c2 * p * p + c1 * p + c0))
    grad = lambda p: 2 * c2 * p + c1
    flow = lambda p: base * (ptdf @ ((Cg @ p - pd) / base))
    cons = [{"type": "eq", "fun": lambda p: np.sum(p) - np.sum(pd), "jac": lambda p: np.ones_like(p)},
            {"type": "ineq", "fun": lambda p: (rate - flow(p))[lim], "jac": lambda p: -(ptdf @ Cg)[lim]},
            {"type": "ineq", "fun": lambda p: (rate + flow(p))[lim], "jac": lambda p: (ptdf @ Cg)[lim]}]
    p0 = np.clip(gen[:, 9] + (gen[:, 8] - gen[:, 9]) * np.sum(pd) / np.sum(gen[:, 8]), gen[:, 9], gen[:, 8])
    r = minimize(cost, p0, jac=grad, bounds=list(zip(gen[:, 9], gen[:, 8])), constraints=cons,
                 method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
    assert r.success, r.message
    out.append(cost(r.x))
print(json.dumps(out))
