-- wrk script of `scripts/bench scale`: each request is a random path of a random kind.
-- Environment: BENCH_TOKEN (API token), BENCH_WRK_PATHS (comma-separated path files, one per kind, written by
-- scale_bench.py paths).
local kinds = {}

function init(args)
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
    wrk.headers["Accept"] = "application/json"
    for file in string.gmatch(os.getenv("BENCH_WRK_PATHS"), "[^,]+") do
        local paths = {}
        for line in io.lines(file) do
            if #line > 0 then paths[#paths + 1] = line end
        end
        kinds[#kinds + 1] = paths
    end
    -- Each thread its own sequence.
    math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 1000003))
end

function request()
    local paths = kinds[math.random(#kinds)]
    return wrk.format("GET", paths[math.random(#paths)])
end
