-- wrk script of `make bench` (cmd/secrets-bench): each request reads the
-- latest version of a random seeded secret, BENCH_0000 … BENCH_<n-1>, through
-- the REST gateway. The Authorization header comes from wrk's -H option.
local n = tonumber(os.getenv("BENCH_KEYS") or "1000")

function init(args)
  -- A different sequence per wrk thread (os.time alone is the same for all).
  local addr = tonumber(string.match(tostring({}), "0x(%x+)") or "0", 16) or 0
  math.randomseed(os.time() + addr % 1000003)
end

function request()
  local key = string.format("BENCH_%04d", math.random(0, n - 1))
  return wrk.format("GET", "/v1/secrets/" .. key .. "/versions/latest:access")
end
