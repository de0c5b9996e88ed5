"""Tests of the economic regions and unit kinds (geo_pipeline.regions)."""

from __future__ import annotations

import pytest

from geo_pipeline import InputError
from geo_pipeline.regions import REGIONS, county_kind, load_regions, region_of, unit_kind


def test_regions_table_is_the_nbs_division() -> None:
    table = load_regions()
    assert len(table) == 31 and table["province_code"].is_unique
    counts = table["region"].value_counts().to_dict()
    assert counts == {"East": 10, "Central": 6, "West": 12, "Northeast": 3}
    assert set(table["region"]) == set(REGIONS)
    by_name = dict(zip(table["province"], table["region"], strict=True))
    # the usual confusions: 内蒙古 and 广西 are West, 海南 East, 河北 East, 山西 Central
    assert by_name["内蒙古自治区"] == "West" and by_name["广西壮族自治区"] == "West"
    assert by_name["海南省"] == "East" and by_name["河北省"] == "East" and by_name["山西省"] == "Central"
    assert {p for p, r in by_name.items() if r == "Northeast"} == {"辽宁省", "吉林省", "黑龙江省"}
    pairs = set(zip(table["region"], table["region_zh"], strict=True))
    assert pairs == {("East", "东部"), ("Central", "中部"), ("West", "西部"), ("Northeast", "东北")}


def test_region_of_uses_the_province_prefix_and_rejects_unknown_codes() -> None:
    out = region_of(["210000", "460301", "650000"])
    assert out["region"].tolist() == ["Northeast", "East", "West"]
    assert out["region_zh"].tolist() == ["东北", "东部", "西部"]
    with pytest.raises(InputError, match=r"belong to no economic region: \['710000', 'None'\]"):
        region_of(["710000", None, "110000"])
    assert region_of(["710000", "110000"], strict=False)["region"].tolist() == [None, "East"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("长安区", "district"), ("沙县区", "district"), ("万柏林区", "district"), ("碑林区", "district"),
        ("新郑市", "city"), ("东莞市", "city"), ("磁县", "county"), ("峨边彝族自治县", "county"),
        ("土默特左旗", "other"), ("鄂伦春自治旗", "other"), ("六枝特区", "other"),
        ("神农架林区", "other"), ("海西蒙古族藏族自治州直辖", "other"),
    ],
)
def test_county_kind(name: str, kind: str) -> None:
    assert county_kind(name) == kind


def test_unit_kind_of_merged_units() -> None:
    assert unit_kind(["district", "district"]) == "district"
    assert unit_kind(["district", "county"]) == "mixed"
    with pytest.raises(InputError):
        unit_kind([])
